-- The demo orders database: what docker-compose.yaml's postgres service
-- loads on first start (/docker-entrypoint-initdb.d) and what sluice's
-- orders-db target points at.
--
-- Run it by hand against an empty database with psql 15 or newer:
--   ORDERS_DB_PASSWORD=... psql -v ON_ERROR_STOP=1 -d orders -f deploy/postgres/seed.sql
--
-- The app_rw password comes from the environment (ORDERS_DB_PASSWORD), never
-- from this file. Every person, card number and SSN below is made up; the card
-- numbers are well-known test numbers that pass the Luhn check, so sluice's
-- credit_card detector has something real to find.

\set ON_ERROR_STOP 1
\getenv app_rw_password ORDERS_DB_PASSWORD
\if :{?app_rw_password}
\else
  \warn 'ORDERS_DB_PASSWORD is not set: it is the password of the app_rw role'
  DO $$ BEGIN RAISE EXCEPTION 'ORDERS_DB_PASSWORD is not set'; END $$;
\endif

-- The role sluice logs in as upstream. SCRAM-SHA-256 (Postgres 15's default)
-- is set explicitly so a server with an older default still stores a verifier,
-- never md5.
SET password_encryption = 'scram-sha-256';
CREATE ROLE app_rw LOGIN PASSWORD :'app_rw_password';

CREATE TABLE customers (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL,
    email       text NOT NULL UNIQUE,
    card_number text,
    ssn         text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    id          bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (id),
    status      text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'paid', 'shipped', 'cancelled')),
    total       numeric(10, 2) NOT NULL CHECK (total >= 0),
    placed_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer_id ON orders (customer_id);

INSERT INTO customers (name, email, card_number, ssn) VALUES
    ('Ada Lovelace',     'ada@example.com',     '4111111111111111', '123-45-6789'),
    ('Grace Hopper',     'grace@example.com',   '5555555555554444', '234-56-7890'),
    ('Alan Turing',      'alan@example.com',    '378282246310005',  '345-67-8901'),
    ('Katherine Johnson','katherine@example.com','6011111111111117', '456-78-9012'),
    ('Edsger Dijkstra',  'edsger@example.com',  '4012888888881881', '567-89-0123');

INSERT INTO orders (customer_id, status, total, placed_at) VALUES
    (1, 'paid',      120.50, now() - interval '9 days'),
    (1, 'shipped',    42.00, now() - interval '7 days'),
    (2, 'pending',   310.99, now() - interval '2 days'),
    (3, 'paid',       15.75, now() - interval '1 day'),
    (3, 'cancelled',  99.00, now() - interval '20 days'),
    (4, 'shipped',   250.00, now() - interval '3 days'),
    (5, 'paid',        8.40, now() - interval '5 hours');

-- app_rw reads and writes rows; it owns nothing, so DDL fails in Postgres
-- too, behind sluice's own deny.
GRANT USAGE ON SCHEMA public TO app_rw;
GRANT SELECT, INSERT, UPDATE, DELETE ON customers, orders TO app_rw;
GRANT USAGE, SELECT ON SEQUENCE customers_id_seq, orders_id_seq TO app_rw;
