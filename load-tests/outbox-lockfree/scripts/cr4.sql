BEGIN;
INSERT INTO app_rows (v) VALUES ('x');
SELECT pgws.send('{"channel":"c' || (random()*3)::int || '","payload":"p"}');
COMMIT;
