BEGIN;
INSERT INTO app_rows (v) VALUES ('x');
SELECT pg_notify('chan_x', '{"channel":"c' || (random()*3)::int || '","payload":"p"}');
COMMIT;
