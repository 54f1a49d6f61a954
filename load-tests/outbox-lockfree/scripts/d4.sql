SELECT proto.send('{"channel":"c' || (random()*3)::int || '","payload":"p"}');
