-- usageflow schema and statements for SQLite, the twin of postgres.sql.
--
-- Tables: the spec's four, profiles, the per-(user, feature) counters and the reservation
-- holds. Every decision (charge, reserve, settle) is ONE transaction (BEGIN IMMEDIATE: the
-- write lock is held from the first read) of the statements below: the counters row of its
-- (user, feature), the usage in the window from the counter and one index seek, and an
-- append to the ledger.
--
-- Layout: the same sections, in the same order, as postgres.sql, and each statement named
-- after the PostgreSQL function whose rule it carries (`settle_hold` is a statement of
-- `settle`'s rule), so that each rule is reviewed as a pair.
--
-- Format (read by usageflow.stores.sql.sqlite_statements): each statement follows a
-- `-- name: <name>` line; the comment lines before its first SQL line and after its last one
-- say what it does and are not part of its text; a final ';' is dropped. `@x@` names a table
-- or index, quoted by usageflow from the validated table names, or a block defined earlier in
-- this file, whose text stands in its place. `{x}` marks text that depends on the arguments
-- (an IN list, an optional term), filled in by the store; no other statement holds braces.
-- Parameters are positional (`?`, or `?N` where one is used twice). Times are ISO strings in
-- UTC (`YYYY-MM-DD HH:MM:SS.ffffff`), which sort as times.

-- name: schema_table
-- The version of the schema made for each set of table names (by its events table).
CREATE TABLE IF NOT EXISTS @schema@ (
    component TEXT PRIMARY KEY, version INTEGER NOT NULL, applied_at TEXT
);

-- name: schema_version
SELECT version FROM @schema@ WHERE component = ?;

-- name: schema_version_set
INSERT INTO @schema@ (component, version, applied_at)
VALUES (?, ?, strftime('%Y-%m-%d %H:%M:%f', 'now'))
ON CONFLICT (component) DO UPDATE SET version = excluded.version,
applied_at = excluded.applied_at;

-- name: events_table
-- The ledger (version 4: its idempotency keys are unique per (user, feature), by the index
-- idx_<events>_idem, no longer by a column constraint).
--
-- Its `id` is a plain INTEGER PRIMARY KEY (the largest id plus one): events are never
-- deleted, so ids still only grow, without the sqlite_sequence row that AUTOINCREMENT reads
-- and rewrites on every insert (a sixth of the cost of recording an event). Databases created
-- before keep their AUTOINCREMENT: it answers the same.
CREATE TABLE IF NOT EXISTS @events@ (
    id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL,
    feature_name TEXT NOT NULL,
    credits_used INTEGER,
    event_type TEXT NOT NULL DEFAULT 'usage'
        CHECK (event_type IN ('usage', 'credit', 'reset', 'adjustment')),
    metadata JSON,
    timestamp TIMESTAMP NOT NULL,
    idempotency_key TEXT,
    running_total INTEGER NOT NULL,
    granted INTEGER NOT NULL DEFAULT 0,      -- credits grants paid (refunds: gave back), v6
    grant_running INTEGER NOT NULL DEFAULT 0 -- the key's running sum of granted, v6
);

-- name: holds_table
-- The holds table (version 3): what is in flight, so small; one B-tree keyed by the
-- reservation id (WITHOUT ROWID), and the idempotency keys in a partial index, which holds
-- without a key do not touch. A reservation then writes three pages, not five.
CREATE TABLE IF NOT EXISTS @holds@ (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    feature_name TEXT NOT NULL,
    credits INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'held'
        CHECK (status IN ('held', 'committed', 'released', 'expired')),
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    idempotency_key TEXT,
    event_id INTEGER,
    alert TEXT, -- what its commit is measured against (limit, window, thresholds), as JSON
    pool_id TEXT -- whose quota it holds: the user's own, or their team account's (version 6)
) WITHOUT ROWID;

-- name: schema
-- The DDL of the schema (version 4: version 1, the Stripe tables of version 2, the index that
-- prunes settled holds of version 3, idempotency keys scoped to (user, feature) of version
-- 4). Every statement is idempotent, so upgrading from 1 or 2 runs it all again; the
-- JavaScript package's tables are adopted by running it too (_sqlite_adopt.py).
CREATE TABLE IF NOT EXISTS @plans@ (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    stripe_price_id TEXT UNIQUE,
    price_amount DECIMAL(10,2),
    price_currency TEXT,
    is_free BOOLEAN NOT NULL DEFAULT 0,
    payment_link_url TEXT,
    created_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    updated_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);
CREATE TABLE IF NOT EXISTS @limits@ (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    plan_id INTEGER NOT NULL REFERENCES @plans@(id) ON DELETE CASCADE,
    feature_name TEXT NOT NULL,
    limit_value INTEGER NOT NULL CHECK (limit_value >= -1),
    period TEXT NOT NULL DEFAULT 'current_month' CHECK (period IN ('current_month',
        'last_30_days', 'last_28_days', 'current_week', 'day', 'lifetime', 'billing_cycle')),
    created_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    updated_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    per_seat BOOLEAN NOT NULL DEFAULT 0, -- the limit is per seat of the subscription (v6)
    UNIQUE (plan_id, feature_name)
);
@events_table@;
-- Keys are unique per (user, feature), and led by the key the index also finds a reservation's
-- commit by its key alone.
CREATE UNIQUE INDEX IF NOT EXISTS @idx_events_idem@
    ON @events@ (idempotency_key, user_id, feature_name)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS @idx_events_user_feature@
    ON @events@ (user_id, feature_name, timestamp);
CREATE INDEX IF NOT EXISTS @idx_events_timestamp@ ON @events@ (timestamp);
CREATE INDEX IF NOT EXISTS @idx_events_type@ ON @events@ (event_type);
CREATE TABLE IF NOT EXISTS @adjustments@ (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    feature_name TEXT NOT NULL,
    amount INTEGER NOT NULL,
    type TEXT NOT NULL CHECK (type IN ('one_time', 'recurring')),
    start_date TIMESTAMP NOT NULL,
    end_date TIMESTAMP NOT NULL,
    metadata JSON,
    created_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    CHECK (start_date < end_date)
);
CREATE INDEX IF NOT EXISTS @idx_adjustments_user@
    ON @adjustments@ (user_id, feature_name);
CREATE INDEX IF NOT EXISTS @idx_adjustments_dates@
    ON @adjustments@ (start_date, end_date);
CREATE TABLE IF NOT EXISTS @profiles@ (
    id TEXT PRIMARY KEY,
    email TEXT,
    plan TEXT,
    subscription_status TEXT,
    stripe_customer_id TEXT,
    current_period_start TIMESTAMP,
    current_period_end TIMESTAMP,
    created_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    updated_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    seats INTEGER -- the subscription's quantity (version 6)
);
CREATE INDEX IF NOT EXISTS @idx_profiles_email@ ON @profiles@ (email);
CREATE INDEX IF NOT EXISTS @idx_profiles_customer@ ON @profiles@ (stripe_customer_id);
CREATE TABLE IF NOT EXISTS @counters@ (
    user_id TEXT NOT NULL,
    feature_name TEXT NOT NULL,
    total INTEGER NOT NULL DEFAULT 0,
    last_ts TIMESTAMP,
    last_reset_at TIMESTAMP,
    reset_base INTEGER NOT NULL DEFAULT 0,
    reset_pre_total INTEGER NOT NULL DEFAULT 0,
    open_holds INTEGER NOT NULL DEFAULT 0, -- unused since version 3 (holds are read directly)
    grant_total INTEGER NOT NULL DEFAULT 0, -- grant_running of the latest event (version 6)
    reset_grant_base INTEGER NOT NULL DEFAULT 0, -- grant_total at the last reset (version 6)
    grants INTEGER NOT NULL DEFAULT 0, -- 1 once the key has had a grant (version 6)
    PRIMARY KEY (user_id, feature_name)
) WITHOUT ROWID;
-- The listings of a feature (top_users) read its counters rows, not every key's.
CREATE INDEX IF NOT EXISTS @idx_counters_feature@ ON @counters@ (feature_name);
@holds_table@;
CREATE INDEX IF NOT EXISTS @idx_holds_active@
    ON @holds@ (user_id, feature_name, expires_at) WHERE status = 'held';
CREATE INDEX IF NOT EXISTS @idx_holds_pool@
    ON @holds@ (pool_id, feature_name, expires_at) WHERE status = 'held';
CREATE INDEX IF NOT EXISTS @idx_holds_settled@
    ON @holds@ (user_id, feature_name, expires_at) WHERE status <> 'held';
DROP INDEX IF EXISTS @idx_holds_key@;
CREATE UNIQUE INDEX IF NOT EXISTS @idx_holds_idem@
    ON @holds@ (idempotency_key, user_id, feature_name) WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS @stripe_events@ (
    event_id TEXT PRIMARY KEY,
    event_type TEXT NOT NULL,
    created TIMESTAMP NOT NULL,
    action TEXT NOT NULL,
    user_id TEXT,
    processed_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS @stripe_subs@ (
    subscription_id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    order_key TEXT NOT NULL,
    started TIMESTAMP,
    ended BOOLEAN NOT NULL,
    plan TEXT NOT NULL,
    status TEXT NOT NULL,
    current_period_start TIMESTAMP,
    current_period_end TIMESTAMP,
    quantity INTEGER -- of the item whose price is the plan (version 6)
);
CREATE INDEX IF NOT EXISTS @idx_stripe_subs_customer@
    ON @stripe_subs@ (customer_id);
CREATE TABLE IF NOT EXISTS @stripe_cust@ (
    customer_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    order_key TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS @idx_stripe_cust_user@ ON @stripe_cust@ (user_id);
CREATE TABLE IF NOT EXISTS @stripe_export@ (
    meter TEXT PRIMARY KEY,
    last_event_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS @alert_rules@ (
    feature_name TEXT NOT NULL,
    plan_id INTEGER NOT NULL DEFAULT 0, -- 0: every plan
    thresholds TEXT NOT NULL,           -- a JSON array of percents
    PRIMARY KEY (feature_name, plan_id)
);
CREATE TABLE IF NOT EXISTS @alerts@ (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    feature_name TEXT NOT NULL,
    threshold INTEGER NOT NULL,
    usage INTEGER NOT NULL,
    limit_value INTEGER NOT NULL,
    window_start TIMESTAMP,
    resets_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL,
    delivered_at TIMESTAMP,
    leased_until TIMESTAMP,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS @idx_alerts_key@
    ON @alerts@ (user_id, feature_name, threshold, created_at);
CREATE INDEX IF NOT EXISTS @idx_alerts_pending@ ON @alerts@ (attempts, id)
    WHERE delivered_at IS NULL;
-- Credit grants (version 6): balances that do not reset with the plan's period. Only the
-- live ones (remaining > 0) are in the index a decision reads.
CREATE TABLE IF NOT EXISTS @grants@ (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    feature_name TEXT NOT NULL,
    credits INTEGER NOT NULL CHECK (credits > 0),
    remaining INTEGER NOT NULL CHECK (remaining >= 0),
    revoked INTEGER NOT NULL DEFAULT 0,
    expires_at TIMESTAMP,
    source TEXT NOT NULL,
    reason TEXT,
    metadata JSON,
    idempotency_key TEXT,
    payment_ref TEXT,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX IF NOT EXISTS @idx_grants_live@
    ON @grants@ (user_id, feature_name, expires_at) WHERE remaining > 0;
CREATE INDEX IF NOT EXISTS @idx_grants_user@ ON @grants@ (user_id, feature_name, id);
CREATE UNIQUE INDEX IF NOT EXISTS @idx_grants_idem@ ON @grants@ (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS @idx_grants_payment@ ON @grants@ (payment_ref)
    WHERE payment_ref IS NOT NULL;
-- Team accounts (version 6): who belongs to which account, with their caps. A removed member
-- keeps their row (removed_at), so that the account's history still names them.
CREATE TABLE IF NOT EXISTS @members@ (
    account_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    limits TEXT NOT NULL DEFAULT '{}', -- a JSON object: feature -> cap
    added_at TIMESTAMP NOT NULL,
    removed_at TIMESTAMP,
    PRIMARY KEY (account_id, user_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS @idx_members_user@ ON @members@ (user_id)
    WHERE removed_at IS NULL;
CREATE TABLE IF NOT EXISTS @credit_packs@ (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    credits TEXT NOT NULL, -- a JSON object: feature -> credits
    stripe_price_id TEXT UNIQUE,
    stripe_payment_link_id TEXT UNIQUE,
    payment_link_url TEXT,
    expires_in_days INTEGER,
    created_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    updated_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);

-- name: table_exists
SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?;

-- name: rebuild_holds
-- Version 3's holds table, from an older one (SQLite cannot change a table's key or
-- constraints in place): `holds_table` is created as <holds>_v3 first, then the rows are
-- copied, except the committed holds without a key that older versions kept (their events
-- answer a repeated commit).
INSERT INTO @holds_v3@ (id, user_id, feature_name, credits, status, created_at, expires_at,
    idempotency_key, event_id)
SELECT id, user_id, feature_name, credits, status, created_at, expires_at, idempotency_key,
    event_id
FROM @holds@ WHERE NOT (status = 'committed' AND idempotency_key IS NULL);
DROP TABLE @holds@;
ALTER TABLE @holds_v3@ RENAME TO @holds@;

-- name: holds_alert_column
-- Version 5's column of the holds table, on an older one.
ALTER TABLE @holds@ ADD COLUMN alert TEXT;

-- name: holds_columns
PRAGMA table_info(@holds@);

-- name: columns_v6
-- The columns version 6 added to tables made before it, one statement each: the store runs
-- those whose table exists without the column (credit grants, team accounts, seats).
ALTER TABLE @events@ ADD COLUMN granted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE @events@ ADD COLUMN grant_running INTEGER NOT NULL DEFAULT 0;
ALTER TABLE @counters@ ADD COLUMN grant_total INTEGER NOT NULL DEFAULT 0;
ALTER TABLE @counters@ ADD COLUMN reset_grant_base INTEGER NOT NULL DEFAULT 0;
ALTER TABLE @counters@ ADD COLUMN grants INTEGER NOT NULL DEFAULT 0;
ALTER TABLE @holds@ ADD COLUMN pool_id TEXT;
ALTER TABLE @limits@ ADD COLUMN per_seat BOOLEAN NOT NULL DEFAULT 0;
ALTER TABLE @profiles@ ADD COLUMN seats INTEGER;
ALTER TABLE @stripe_subs@ ADD COLUMN quantity INTEGER;

-- name: table_columns
-- The columns of a table ({table}: its quoted name).
PRAGMA table_info({table});

-- name: holds_pool_v6
-- Holds made before version 6 hold their own user's quota.
UPDATE @holds@ SET pool_id = user_id WHERE pool_id IS NULL;

-- name: events_indexes
-- The ledger's indexes; a unique one ('u') made by a column constraint of versions 1-3 means
-- the ledger must be rebuilt.
PRAGMA index_list(@events@);

-- name: rebuild_events
-- Version 4's ledger, from an older one whose idempotency_key column was UNIQUE (a column
-- constraint SQLite cannot drop): `events_table` is created as <events>_v4 first, then every
-- row is copied as it is, ids included; the indexes are made again by the schema that runs
-- next.
INSERT INTO @events_v4@ (id, user_id, feature_name, credits_used, event_type, metadata,
    timestamp, idempotency_key, running_total)
SELECT id, user_id, feature_name, credits_used, event_type, metadata, timestamp,
    idempotency_key, running_total
FROM @events@;
DROP TABLE @events@;
ALTER TABLE @events_v4@ RENAME TO @events@;

-- ------------------------------------------------------------------------------------------
-- Internal helpers.

-- name: event_columns
-- An event as the store reads it (the columns of PostgreSQL's `event_json`).
id, user_id, feature_name, credits_used, event_type, metadata, timestamp, idempotency_key

-- name: used
-- What a decision reads, in one statement (the rules of PostgreSQL's `used` and `held`): the
-- counters row, the running totals (all usage, and what grants paid) before the window, the
-- credits of live holds, how many holds have expired but are still marked held, and the
-- balance of live grants. ?1 user, ?2 feature, ?3 window start (or NULL), ?4 now. The usage
-- before the window is read only when no reset since its start answers, and what grants paid
-- before it and their balance only for a key that has had a grant (`grants`): scalar
-- subqueries, each one index seek, which SQLite skips when their CASE does not ask for them
-- (a join would materialize a table for every decision). The holds come from the partial
-- index of held ones, the grants from the partial index of live ones. TOTAL() sums in
-- floating point, where SUM() would fail the statement past 2**63 (holds on an unlimited
-- feature may add up to more); past 2**53 the store sums them exactly with `held`.
SELECT c.total, c.last_ts, c.last_reset_at, c.reset_base, c.reset_pre_total, c.grant_total,
    c.reset_grant_base,
    CASE WHEN ?3 IS NOT NULL AND (c.last_reset_at IS NULL OR c.last_reset_at < ?3)
    THEN (SELECT e.running_total FROM @events@ e
        WHERE e.user_id = ?1 AND e.feature_name = ?2 AND e.timestamp < ?3
        ORDER BY e.timestamp DESC, e.id DESC LIMIT 1) END,
    CASE WHEN c.grants AND ?3 IS NOT NULL AND (c.last_reset_at IS NULL OR c.last_reset_at < ?3)
    THEN (SELECT e.grant_running FROM @events@ e
        WHERE e.user_id = ?1 AND e.feature_name = ?2 AND e.timestamp < ?3
        ORDER BY e.timestamp DESC, e.id DESC LIMIT 1) END,
    h.live, h.expired,
    CASE WHEN c.grants THEN (SELECT TOTAL(g.remaining) FROM @grants@ g
        WHERE g.user_id = ?1 AND g.feature_name = ?2 AND g.remaining > 0
        AND (g.expires_at IS NULL OR g.expires_at > ?4)) ELSE 0 END
FROM (SELECT TOTAL(CASE WHEN expires_at > ?4 THEN credits END) AS live,
        COUNT(CASE WHEN expires_at <= ?4 THEN 1 END) AS expired
    FROM @holds@ WHERE pool_id = ?1 AND feature_name = ?2 AND status = 'held') h
LEFT JOIN @counters@ c ON c.user_id = ?1 AND c.feature_name = ?2;

-- name: counter
-- The counters row of a key (where PostgreSQL's `lock` also locks it: here the transaction's
-- BEGIN IMMEDIATE holds the write lock).
SELECT total, last_ts, last_reset_at, reset_base, reset_pre_total, grant_total,
    reset_grant_base
FROM @counters@ WHERE user_id = ? AND feature_name = ?;

-- name: prune_holds
-- Delete the settled or expired holds of a key kept past their expiry for longer than
-- HOLD_GRACE (the last parameter is now - HOLD_GRACE): until then a late commit still records
-- and a commit after a release is still refused.
DELETE FROM @holds@ WHERE user_id = ? AND feature_name = ?
    AND status <> 'held' AND expires_at < ?;

-- name: held
-- Credits held now by live holds on a key's quota, summed exactly (in Python) when `used`'s
-- floating-point total is past 2**53.
SELECT credits FROM @holds@ WHERE pool_id = ? AND feature_name = ?
    AND status = 'held' AND expires_at > ?;

-- name: append_event
-- Append one event to a key: its timestamp (chosen by the store) never goes backwards within
-- the key, and running_total is the counter's total after it.
INSERT INTO @events@ (user_id, feature_name, credits_used, event_type, metadata, timestamp,
    idempotency_key, running_total, granted, grant_running)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: append_counter
INSERT INTO @counters@ (user_id, feature_name, total, last_ts, last_reset_at, reset_base,
    reset_pre_total, grant_total, reset_grant_base)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (user_id, feature_name) DO UPDATE SET total = excluded.total,
    last_ts = excluded.last_ts, last_reset_at = excluded.last_reset_at,
    reset_base = excluded.reset_base, reset_pre_total = excluded.reset_pre_total,
    grant_total = excluded.grant_total, reset_grant_base = excluded.reset_grant_base;

-- ------------------------------------------------------------------------------------------
-- The operations.

-- name: charge_replay
-- The event of an idempotency key in its (user, feature): a repeated charge answers it.
SELECT @event_columns@ FROM @events@
WHERE idempotency_key = ? AND user_id = ? AND feature_name = ?;

-- name: charge_member_held
-- Credits a team member holds now (on their account's quota), for their cap.
SELECT TOTAL(credits) FROM @holds@
WHERE user_id = ? AND feature_name = ? AND status = 'held' AND expires_at > ?;

-- name: reserve_expire
-- Holds past their expiry are marked so (they may still be committed); old ones are pruned
-- next (prune_holds).
UPDATE @holds@ SET status = 'expired'
WHERE pool_id = ? AND feature_name = ? AND status = 'held' AND expires_at <= ?;

-- name: reserve_replay
SELECT id, credits FROM @holds@ WHERE idempotency_key = ? AND user_id = ? AND feature_name = ?;

-- name: reserve_id_used
-- Whether a hold has this id: asked only when nothing fits or the insert failed, so that a
-- reused id is refused as PostgreSQL refuses it.
SELECT 1 FROM @holds@ WHERE id = ?;

-- name: reserve
-- A reused reservation id (74 random bits a millisecond) fails the primary key: nothing
-- written.
INSERT INTO @holds@ (id, user_id, feature_name, credits, status, created_at, expires_at,
    idempotency_key, alert, pool_id)
VALUES (?, ?, ?, ?, 'held', ?, ?, ?, ?, ?);

-- name: settle_hold
-- The hold and the counters row of its key.
SELECT h.user_id, h.feature_name, h.status, h.idempotency_key, h.alert, h.pool_id, c.total,
    c.last_ts,
    c.last_reset_at, c.reset_base, c.reset_pre_total, c.grant_total, c.reset_grant_base
FROM @holds@ h LEFT JOIN @counters@ c
    ON c.user_id = h.user_id AND c.feature_name = h.feature_name
WHERE h.id = ?;

-- name: settle_replay
-- The event of a reservation's commit, by its key alone ('reservation:<id>', unique by
-- construction): a committed hold is deleted (or kept, when keyed), its event answers.
SELECT @event_columns@ FROM @events@ WHERE idempotency_key = ?;

-- name: settle_release
UPDATE @holds@ SET status = 'released' WHERE id = ?;

-- name: settle_delete
DELETE FROM @holds@ WHERE id = ?;

-- name: settle_commit
-- Kept: a reserve with this key replays it.
UPDATE @holds@ SET status = 'committed', event_id = ? WHERE id = ?;

-- name: hourly
-- Net credits per (user, feature, UTC hour) before the end, resets excluded: {users} and
-- {features} are one `?` per user and per feature, {since} is `hourly_since` when a start is
-- given.
SELECT user_id, feature_name, substr(timestamp, 1, 13), SUM(COALESCE(credits_used, 0))
FROM @events@
WHERE user_id IN ({users}) AND feature_name IN ({features})
    AND event_type != 'reset' AND timestamp < ? {since}
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;

-- name: hourly_since
AND timestamp >= ?

-- name: hourly_by_member
-- `hourly` of accounts, by the member that spent each credit (the account itself when none).
SELECT COALESCE(json_extract(metadata, '$._usageflow_member'), user_id), feature_name,
    substr(timestamp, 1, 13), SUM(COALESCE(credits_used, 0))
FROM @events@
WHERE user_id IN ({users}) AND feature_name IN ({features})
    AND event_type != 'reset' AND timestamp < ? {since}
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;

-- name: events
-- A user's events across features, newest first.
SELECT @event_columns@ FROM @events@ WHERE user_id = ? ORDER BY id DESC LIMIT ?;

-- name: events_of_feature
-- Newest by time, as PostgreSQL lists them: ids follow time within a key only for events
-- usageflow recorded (not for a ledger adopted from the JavaScript package).
SELECT @event_columns@ FROM @events@ WHERE user_id = ? AND feature_name = ?
ORDER BY timestamp DESC, id DESC LIMIT ?;

-- name: ledger_check
-- The ledger's sum of a key, to compare with its counter (`counter`). Audits only.
SELECT COALESCE(SUM(credits_used), 0) FROM @events@ WHERE user_id = ? AND feature_name = ?;

-- name: top_users
-- The users with the most recorded usage of a feature in the window starting at ?2 (NULL:
-- lifetime), as `used` measures it: one prefix seek per counters row of the feature.
-- ?1 feature, ?2 window start (or NULL), ?3 limit.
SELECT user_id, used FROM (SELECT c.user_id, CASE
        WHEN c.last_reset_at IS NOT NULL AND (?2 IS NULL OR c.last_reset_at >= ?2)
        THEN c.total - c.reset_base
        WHEN ?2 IS NULL THEN c.total
        WHEN c.last_ts IS NULL OR c.last_ts < ?2 THEN 0
        ELSE c.total - COALESCE((SELECT e.running_total FROM @events@ e
            WHERE e.user_id = c.user_id AND e.feature_name = c.feature_name
            AND e.timestamp < ?2 ORDER BY e.timestamp DESC, e.id DESC LIMIT 1), 0)
        END AS used
    FROM @counters@ c WHERE c.feature_name = ?1)
WHERE used > 0 ORDER BY used DESC, user_id LIMIT ?3;

-- name: recent_events
-- The most recent events of every user, newest first.
SELECT @event_columns@ FROM @events@ ORDER BY id DESC LIMIT ?;

-- name: recent_events_of_feature
SELECT @event_columns@ FROM @events@ WHERE feature_name = ? ORDER BY id DESC LIMIT ?;

-- ------------------------------------------------------------------------------------------
-- Plans, limits, profiles, adjustments.

-- name: catalog_plans
SELECT id, name, stripe_price_id, price_amount, price_currency, is_free, payment_link_url
FROM @plans@;

-- name: catalog_limits
SELECT plan_id, feature_name, limit_value, period, per_seat FROM @limits@;

-- name: upsert_plan_by_price
-- A plan is found by its Stripe price, or, without one, by its name among those without.
SELECT id FROM @plans@ WHERE stripe_price_id = ?;

-- name: upsert_plan_by_name
SELECT id FROM @plans@ WHERE stripe_price_id IS NULL AND name = ? ORDER BY id LIMIT 1;

-- name: upsert_plan_update
UPDATE @plans@ SET name = ?, stripe_price_id = ?, price_amount = ?, price_currency = ?,
    is_free = ?, payment_link_url = ?, updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE id = ?;

-- name: upsert_plan_insert
INSERT INTO @plans@ (name, stripe_price_id, price_amount, price_currency, is_free,
    payment_link_url)
VALUES (?, ?, ?, ?, ?, ?);

-- name: upsert_plan_read
SELECT id, name, stripe_price_id, price_amount, price_currency, is_free, payment_link_url
FROM @plans@ WHERE id = ?;

-- name: set_limit_plan
SELECT 1 FROM @plans@ WHERE id = ?;

-- name: set_limit
INSERT INTO @limits@ (plan_id, feature_name, limit_value, period, per_seat)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (plan_id, feature_name) DO UPDATE SET limit_value = excluded.limit_value,
    period = excluded.period, per_seat = excluded.per_seat,
    updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now');

-- name: update_price
-- Also what a Stripe price event applies (stripe_apply).
UPDATE @plans@ SET price_amount = ?, price_currency = ?,
    updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE stripe_price_id = ?;

-- name: get_profile
SELECT id, email, plan, subscription_status, stripe_customer_id, current_period_start,
    current_period_end, seats
FROM @profiles@ WHERE id = ?;

-- name: upsert_profile
-- Create the profile or set the columns given (absent ones are kept): {columns} is `id` and
-- the columns given, {marks} one `?` each, {update} `upsert_profile_update` with one
-- `column = excluded.column` per column given, or `upsert_profile_keep` when none is.
INSERT INTO @profiles@ ({columns}) VALUES ({marks}) ON CONFLICT (id) {update};

-- name: upsert_profile_update
DO UPDATE SET {assignments}, updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')

-- name: upsert_profile_keep
DO NOTHING

-- name: add_adjustment
INSERT INTO @adjustments@ (user_id, feature_name, amount, type, start_date, end_date, metadata)
VALUES (?, ?, ?, ?, ?, ?, ?);

-- name: adjustments
SELECT id, amount, type, start_date, end_date, metadata FROM @adjustments@
WHERE user_id = ? AND feature_name = ? AND end_date > ? ORDER BY id;

-- ------------------------------------------------------------------------------------------
-- Stripe: webhook events applied once and in order, and the meter export cursor. One event is
-- one transaction under the write lock, so no other writer interleaves.

-- name: stripe_refresh_profile
-- Refresh the profile of a user from the subscriptions of the customers linked to it: the
-- profile exists, then takes the best subscription's state (live before ended, the latest
-- started), or, with none, the customer linked last.
INSERT INTO @profiles@ (id) VALUES (?) ON CONFLICT (id) DO NOTHING;

-- name: stripe_refresh_best
SELECT s.customer_id, s.plan, s.status, s.current_period_start, s.current_period_end,
    s.quantity
FROM @stripe_subs@ s JOIN @stripe_cust@ k ON k.customer_id = s.customer_id
WHERE k.user_id = ?
ORDER BY s.ended ASC, s.started DESC, s.subscription_id DESC LIMIT 1;

-- name: stripe_refresh_set
UPDATE @profiles@ SET stripe_customer_id = ?, plan = ?, subscription_status = ?,
    current_period_start = ?, current_period_end = ?, seats = ?,
    updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE id = ?;

-- name: stripe_refresh_customer
UPDATE @profiles@ SET stripe_customer_id = (SELECT customer_id FROM @stripe_cust@
        WHERE user_id = ? ORDER BY order_key DESC, customer_id DESC LIMIT 1),
    updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE id = ?;

-- name: stripe_apply_seen
-- An event seen before answers 'duplicate' with the user it recorded.
SELECT user_id FROM @stripe_events@ WHERE event_id = ?;

-- name: stripe_apply_link_email
-- A checkout without a user id links the one profile with its email (two: none).
SELECT id FROM @profiles@ WHERE lower(email) = lower(?) LIMIT 2;

-- name: stripe_apply_link_known
-- A link no newer than the customer's known one is stale.
SELECT order_key FROM @stripe_cust@ WHERE customer_id = ?;

-- name: stripe_apply_link_customer
INSERT INTO @stripe_cust@ (customer_id, user_id, order_key) VALUES (?, ?, ?)
ON CONFLICT (customer_id) DO UPDATE SET user_id = excluded.user_id,
    order_key = excluded.order_key;

-- name: stripe_apply_link_profile
INSERT INTO @profiles@ (id, email) VALUES (?, ?)
ON CONFLICT (id) DO UPDATE SET email = COALESCE(email, excluded.email);

-- name: stripe_apply_sub_old
-- A subscription state no newer than the known one (by its ordering key, or, when guarded,
-- by its period end) is stale; it may still tell when the subscription started.
SELECT order_key, current_period_end FROM @stripe_subs@ WHERE subscription_id = ?;

-- name: stripe_apply_sub_started
UPDATE @stripe_subs@ SET started = ? WHERE subscription_id = ? AND started IS NULL;

-- name: stripe_apply_sub_upsert
INSERT INTO @stripe_subs@ (subscription_id, customer_id, order_key, started, ended, plan,
    status, current_period_start, current_period_end, quantity)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (subscription_id) DO UPDATE SET customer_id = excluded.customer_id,
    order_key = excluded.order_key, started = COALESCE(excluded.started, started),
    ended = excluded.ended, plan = excluded.plan, status = excluded.status,
    current_period_start = excluded.current_period_start,
    current_period_end = excluded.current_period_end,
    quantity = COALESCE(excluded.quantity, quantity);

-- name: stripe_apply_user
-- The user a customer is linked to.
SELECT user_id FROM @stripe_cust@ WHERE customer_id = ?;

-- name: stripe_apply_sub_profile
-- A customer linked to no user yet is linked to the profile that names it, if any; else the
-- subscription stays 'pending'.
SELECT id FROM @profiles@ WHERE stripe_customer_id = ? ORDER BY id LIMIT 1;

-- name: stripe_apply_sub_customer
INSERT INTO @stripe_cust@ (customer_id, user_id, order_key) VALUES (?, ?, '');

-- name: stripe_apply_record
INSERT INTO @stripe_events@ (event_id, event_type, created, action, user_id, processed_at)
VALUES (?, ?, ?, ?, ?, ?);

-- name: stripe_apply_grants_of_payment
-- The grants a refunded payment paid for: what is left of them is taken back.
SELECT id, feature_name, credits, remaining, revoked, user_id FROM @grants@
WHERE payment_ref = ? ORDER BY id;

-- name: stripe_apply_grant_revoke
UPDATE @grants@ SET remaining = ?, revoked = ? WHERE id = ?;

-- name: stripe_batch
-- The ledger events after the meter's cursor, with their customer ids (up to a limit).
SELECT e.id, e.user_id, e.feature_name, e.credits_used, e.event_type, e.metadata,
    e.timestamp, e.idempotency_key, p.stripe_customer_id
FROM @events@ e LEFT JOIN @profiles@ p ON p.id = e.user_id
WHERE e.id > ? ORDER BY e.id LIMIT ?;

-- name: stripe_batch_of_feature
SELECT e.id, e.user_id, e.feature_name, e.credits_used, e.event_type, e.metadata,
    e.timestamp, e.idempotency_key, p.stripe_customer_id
FROM @events@ e LEFT JOIN @profiles@ p ON p.id = e.user_id
WHERE e.id > ? AND e.feature_name = ? ORDER BY e.id LIMIT ?;

-- name: stripe_cursor
-- The meter's cursor: the last ledger event it exported (none: 0).
SELECT last_event_id FROM @stripe_export@ WHERE meter = ?;

-- name: stripe_cursor_advance
-- The cursor only moves forward.
INSERT INTO @stripe_export@ (meter, last_event_id) VALUES (?, ?)
ON CONFLICT (meter) DO UPDATE SET last_event_id = max(last_event_id, excluded.last_event_id);

-- name: stripe_pending
-- Subscriptions kept 'pending': their customer is linked to no user yet.
SELECT subscription_id, customer_id, order_key, started, ended, plan, status,
    current_period_start, current_period_end, quantity
FROM @stripe_subs@ s
WHERE NOT EXISTS (SELECT 1 FROM @stripe_cust@ k WHERE k.customer_id = s.customer_id)
ORDER BY started IS NULL, started DESC, subscription_id LIMIT ?;

-- name: stripe_recent
SELECT event_id, event_type, created, action, user_id, processed_at FROM @stripe_events@
ORDER BY processed_at DESC, event_id DESC LIMIT ?;

-- ------------------------------------------------------------------------------------------
-- Alerts: thresholds crossed, recorded by the charge that crossed them, then delivered.

-- name: alerts_seen
-- Has the threshold an alert in the window (from ?4; '' when the window is "ever")?
SELECT 1 FROM @alerts@
WHERE user_id = ? AND feature_name = ? AND threshold = ? AND created_at >= ? LIMIT 1;

-- name: alerts_record
INSERT INTO @alerts@ (user_id, feature_name, threshold, usage, limit_value, window_start,
                      resets_at, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?);

-- name: alert_columns
id, user_id, feature_name, threshold, usage, limit_value, window_start, resets_at, created_at,
delivered_at, attempts

-- name: alert_thresholds
SELECT feature_name, plan_id, thresholds FROM @alert_rules@ ORDER BY feature_name, plan_id;

-- name: set_alert_thresholds
INSERT INTO @alert_rules@ (feature_name, plan_id, thresholds) VALUES (?, ?, ?)
ON CONFLICT (feature_name, plan_id) DO UPDATE SET thresholds = excluded.thresholds;

-- name: set_alert_thresholds_clear
DELETE FROM @alert_rules@ WHERE feature_name = ? AND plan_id = ?;

-- name: claim_alerts
SELECT @alert_columns@ FROM @alerts@
WHERE delivered_at IS NULL AND (leased_until IS NULL OR leased_until <= ?)
ORDER BY attempts, id LIMIT ?;

-- name: claim_alerts_lease
UPDATE @alerts@ SET leased_until = ? WHERE id = ?;

-- name: finish_alert
UPDATE @alerts@ SET delivered_at = CASE WHEN ?1 THEN ?2 END,
    attempts = attempts + CASE WHEN ?1 THEN 0 ELSE 1 END, leased_until = NULL
WHERE id = ?3 AND delivered_at IS NULL;

-- name: list_alerts
SELECT @alert_columns@ FROM @alerts@
WHERE (?1 IS NULL OR user_id = ?1) AND (NOT ?2 OR delivered_at IS NULL)
ORDER BY id DESC LIMIT ?3;

-- ------------------------------------------------------------------------------------------
-- Credit grants: drawn in spending order (the one expiring first first, those without expiry
-- last), given back in the reverse order.

-- name: grant_draw_spend
-- The live grants of a key, in spending order (PostgreSQL's `grant_draw`, which charge and
-- settle call). ?3 now.
SELECT id, remaining FROM @grants@
WHERE user_id = ? AND feature_name = ? AND remaining > 0
    AND (expires_at IS NULL OR expires_at > ?)
ORDER BY expires_at IS NULL, expires_at, id;

-- name: grant_draw_remaining
-- Spend from a grant (a negative amount: give back to it).
UPDATE @grants@ SET remaining = remaining - ? WHERE id = ?;

-- name: grant_draw_give_back
-- The unexpired grants of a key something was spent from, in the reverse order, with what
-- was spent from each (taken back by refunds excluded).
SELECT id, credits - revoked - remaining FROM @grants@
WHERE user_id = ? AND feature_name = ? AND credits - revoked - remaining > 0
    AND (expires_at IS NULL OR expires_at > ?)
ORDER BY expires_at IS NULL DESC, expires_at DESC, id DESC;

-- name: grant_columns
id, user_id, feature_name, credits, remaining, revoked, expires_at, source, reason, metadata,
payment_ref, created_at

-- name: grant_credits_replay
SELECT @grant_columns@ FROM @grants@ WHERE user_id = ? AND idempotency_key = ?;

-- name: grant_credits_insert
INSERT INTO @grants@ (user_id, feature_name, credits, remaining, expires_at, source, reason,
    metadata, idempotency_key, payment_ref, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: grant_credits_read
SELECT @grant_columns@ FROM @grants@ WHERE id = ?;

-- name: grant_credits_mark
-- The key has had a grant: its decisions read the grants' balance from now on.
INSERT INTO @counters@ (user_id, feature_name, grants) VALUES (?, ?, 1)
ON CONFLICT (user_id, feature_name) DO UPDATE SET grants = 1;

-- name: list_grants
SELECT @grant_columns@ FROM @grants@ WHERE user_id = ?1 AND (?2 IS NULL OR feature_name = ?2)
ORDER BY id DESC;

-- name: pack_columns
id, name, credits, stripe_price_id, stripe_payment_link_id, payment_link_url, expires_in_days

-- name: credit_packs
SELECT @pack_columns@ FROM @credit_packs@ ORDER BY id;

-- name: upsert_credit_pack_find
-- A pack is found by its Stripe price, else its Payment Link, else (with neither) its name.
SELECT id FROM @credit_packs@
WHERE (?1 IS NOT NULL AND stripe_price_id = ?1)
    OR (?1 IS NULL AND ?2 IS NOT NULL AND stripe_payment_link_id = ?2)
    OR (?1 IS NULL AND ?2 IS NULL AND stripe_price_id IS NULL
        AND stripe_payment_link_id IS NULL AND name = ?3)
ORDER BY id LIMIT 1;

-- name: upsert_credit_pack_update
UPDATE @credit_packs@ SET name = ?, credits = ?, stripe_price_id = ?,
    stripe_payment_link_id = ?, payment_link_url = ?, expires_in_days = ?,
    updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
WHERE id = ?;

-- name: upsert_credit_pack_insert
INSERT INTO @credit_packs@ (name, credits, stripe_price_id, stripe_payment_link_id,
    payment_link_url, expires_in_days)
VALUES (?, ?, ?, ?, ?, ?);

-- name: upsert_credit_pack_read
SELECT @pack_columns@ FROM @credit_packs@ WHERE id = ?;


-- ------------------------------------------------------------------------------------------
-- Team accounts: members share their account's plan and pool, within their own caps.

-- name: member_columns
account_id, user_id, limits, added_at, removed_at

-- name: add_member_current
-- The user's current membership, and whether the account is itself a member or the user
-- has members (no nesting).
SELECT (SELECT account_id FROM @members@ WHERE user_id = ?1 AND removed_at IS NULL),
    EXISTS (SELECT 1 FROM @members@ WHERE user_id = ?2 AND removed_at IS NULL),
    EXISTS (SELECT 1 FROM @members@ WHERE account_id = ?1 AND removed_at IS NULL);

-- name: add_member_upsert
INSERT INTO @members@ (account_id, user_id, limits, added_at) VALUES (?, ?, ?, ?)
ON CONFLICT (account_id, user_id) DO UPDATE SET limits = excluded.limits,
    added_at = CASE WHEN removed_at IS NULL THEN added_at ELSE excluded.added_at END,
    removed_at = NULL;

-- name: add_member_read
SELECT @member_columns@ FROM @members@ WHERE account_id = ? AND user_id = ?;

-- name: remove_member
UPDATE @members@ SET removed_at = ? WHERE account_id = ? AND user_id = ? AND removed_at IS NULL;

-- name: list_members
SELECT @member_columns@ FROM @members@
WHERE account_id = ?1 AND (?2 OR removed_at IS NULL) ORDER BY user_id;

-- name: get_membership
SELECT @member_columns@ FROM @members@ WHERE user_id = ? AND removed_at IS NULL;

-- name: has_members
-- Whether any account has a member: with none, decisions skip looking for an account.
SELECT EXISTS (SELECT 1 FROM @members@ WHERE removed_at IS NULL);
