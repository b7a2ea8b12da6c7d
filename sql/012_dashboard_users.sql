-- Who may open the dashboards (docs/users.md). Managed with `mesflow user ...` and
-- `mesflow token ...`; read by dashboards/auth.py on every request.

-- A person. Roles are ordered viewer < operator < manager < admin; a page declares the
-- lowest role that may see it. The password is stored as a werkzeug hash (scrypt with a
-- per-user salt), never in clear; '!' means "no password" (a user who signs in only through
-- a trusted proxy's header).
CREATE TABLE dashboard_user (
    username       text        PRIMARY KEY
                   CHECK (length(username) BETWEEN 1 AND 64),
    role           text        NOT NULL
                   CHECK (role IN ('viewer', 'operator', 'manager', 'admin')),
    password_hash  text        NOT NULL,
    -- Changed with every password change and role change: a session cookie carries the
    -- epoch it was issued under, so older cookies stop working at once.
    session_epoch  integer     NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    last_login_at  timestamptz
);

-- A read-only token for a wall screen (a TV bookmarks /andon?token=...). Only the SHA-256
-- of the token is stored: the token is 256 random bits, so a fast hash is enough and a
-- leaked table reveals no usable token. Revoking stops the token and every session opened
-- with it.
CREATE TABLE dashboard_token (
    id            bigserial   PRIMARY KEY,
    name          text        NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    token_sha256  text        NOT NULL UNIQUE,
    role          text        NOT NULL DEFAULT 'viewer' CHECK (role = 'viewer'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
CREATE INDEX dashboard_token_name ON dashboard_token (name);
