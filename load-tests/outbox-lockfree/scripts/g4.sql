BEGIN;
INSERT INTO app_rows (v) VALUES ('x');
SELECT proto.send2('{"channel":"c' || (random()*3)::int || '","payload":"p"}');
COMMIT;
