SELECT pg_notify('chan_x', '{"channel":"c' || (random()*3)::int || '","payload":"p"}');
