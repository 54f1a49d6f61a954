SELECT pgws.send('{"channel":"c1","payload":"p"}');
