SELECT proto.send2('{"channel":"c' || (random()*3)::int || '","payload":"p"}');
