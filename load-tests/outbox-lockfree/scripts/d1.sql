SELECT proto.send('{"channel":"c1","payload":"p"}');
