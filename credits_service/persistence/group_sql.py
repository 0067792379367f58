"""The statements of the hot paths: each spans tables, so that a group transaction of
CheckAndReserve, Commit or Release calls (service/group_commit.py) takes three round trips
whatever its size. Written in asyncpg's native `$n` form and prepared once per connection.

Each statement's rows are read by column name (groups.py); where a statement returns rows of
several kinds in one UNION ALL, every column is named in its first SELECT and a `kind` column
(or NULLs) tells them apart.
"""

from __future__ import annotations

from credits_service.persistence.columns import A_ACCOUNT, ACCOUNT, CONSUMPTION_ORDER, RESERVATION

_NO_ACCOUNT = "NULL::text" + ", NULL::bigint" * (len(ACCOUNT.split(",")) - 1)

# Draws with their lots' consumption order columns, for a FROM clause: `d` the draw, `l` its
# lot. Each lot is found by its primary key, once per draw: the LIMIT keeps the planner from
# joining the two tables wholesale. Until autovacuum first analyzed reservation_lots (a new
# database's first minute or so), the planner took each reservation for about 200 draws and
# answered a plain join with a hash join over a sequential scan of every lot, once per
# reservation (bench/README.md has the figures). Once analyzed, both plan alike.
DRAWS_AND_LOTS = """reservation_lots d CROSS JOIN LATERAL (
        SELECT l.lot_id, l.priority, l.expire_time FROM credit_lots l
         WHERE l.lot_id = d.lot_id LIMIT 1) l"""

DRAWS_OF = f"""
    SELECT d.reservation_id::text AS reservation_id, d.lot_id, d.held, d.consumed
      FROM {DRAWS_AND_LOTS}
     WHERE d.reservation_id = ANY($1::uuid[])
     ORDER BY d.reservation_id, {CONSUMPTION_ORDER}"""

# Marks the (locked) accounts' lots past expire_time as expired, keeping their held credits.
EXPIRE_DUE = """
    UPDATE credit_lots l
       SET remaining = l.held, expired_time = credits_now()
      FROM (SELECT lot_id, remaining - held AS unheld FROM credit_lots
             WHERE account_id = ANY({account_ids}) AND expired_time IS NULL
               AND expire_time <= credits_now()) due
     WHERE l.lot_id = due.lot_id AND l.expired_time IS NULL
    RETURNING l.account_id, l.lot_id, due.unheld, l.expire_time"""

# For a lateral join on w (account_id, amount > 0): the account's unexpired lots with free
# credits in consumption order, (lot_id, free, running total), as many as cover w.amount.
# Each such lot has at least one free credit, so the first w.amount of them always cover it:
# the LIMIT lets the scan of the consumption-order index stop there instead of reading and
# sorting every lot of the account. The unexpired test is written with coalesce, not as
# "IS NULL OR >", which the planner answered with a BitmapOr over a second index.
FREE_LOTS = f"""
    SELECT lot_id, free, running FROM (
        SELECT l.lot_id, l.free,
               sum(l.free) OVER (ORDER BY {CONSUMPTION_ORDER} ROWS UNBOUNDED PRECEDING)
                   AS running
          FROM (SELECT l.lot_id, l.remaining - l.held AS free, l.priority, l.expire_time
                  FROM credit_lots l
                 WHERE l.account_id = w.account_id AND l.remaining > 0
                   AND l.remaining > l.held AND l.expired_time IS NULL
                   AND coalesce(l.expire_time, 'infinity') > credits_now()
                 ORDER BY {CONSUMPTION_ORDER}
                 LIMIT w.amount) l) x
     WHERE running - free < w.amount"""

# A group of CheckAndReserve calls, first: the keys stored already, and the accounts of the
# others (with their status, plan and pool: a member's organisation's), locked in account
# order. A stored key's row has its scope; a
# locked account's row has none.
FIND_AND_LOCK = f"""
    WITH k AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
               AS k (scope, idempotency_key, account_id)
    ), stored AS MATERIALIZED (
        SELECT i.scope, i.idempotency_key, i.request_hash, i.response
          FROM k JOIN idempotency_keys i
            ON i.scope = k.scope AND i.idempotency_key = k.idempotency_key
    ), fresh AS MATERIALIZED (  -- one array, so the accounts are found in one index scan
        SELECT array_agg(k.account_id) AS account_ids FROM k
         WHERE NOT EXISTS (SELECT FROM stored s WHERE s.scope = k.scope
                                                 AND s.idempotency_key = k.idempotency_key)
    ), locked AS MATERIALIZED (
        SELECT {ACCOUNT}, a.status, a.plan, a.pool_account_id FROM accounts a
         WHERE a.account_id = ANY((SELECT account_ids FROM fresh)::text[])
         ORDER BY a.account_id
           FOR UPDATE OF a
    )
    SELECT NULL::text AS scope, NULL::text AS idempotency_key, NULL::bytea AS request_hash,
           NULL::text AS response, {ACCOUNT}, status, plan, pool_account_id
      FROM locked
    UNION ALL
    SELECT scope, idempotency_key, request_hash, response, {_NO_ACCOUNT}, NULL::text,
           NULL::text, NULL::text
      FROM stored"""

# The keys a group decided, each with its response, in (scope, key) order so that two
# transactions taking keys of each other wait in one order (groups.py sorts them: sorting in
# SQL costs as much as the rest of the insert, the rows being wide). A key another
# transaction stored since FIND_AND_LOCK is waited for, then violates the primary key. A plain
# INSERT: ON CONFLICT DO NOTHING would probe the index once more per key. The method, one for
# all, is a scalar: asyncpg encodes an array element by element on the event loop.
STORE_KEYS = """
    INSERT INTO idempotency_keys (scope, idempotency_key, method, request_hash, response)
    SELECT scope, idempotency_key, {2}::text, request_hash, response
      FROM unnest({0}::text[], {1}::text[], {3}::bytea[], {4}::text[])
           AS r (scope, idempotency_key, request_hash, response)"""

COMPLETE = STORE_KEYS.format("$1", "$2", "$3", "$4", "$5")

# Then: expire the locked accounts' due lots, and find the free lots that cover what each
# account wants, and the service clock, at once. Kind 0: a lot just expired (credits: its
# unheld remainder); kind 1: a free lot (credits: free); kind 2: the clock.
EXPIRE_AND_FIND = f"""
    WITH expired AS ({EXPIRE_DUE.format(account_ids="$1::text[]")})
    SELECT 0 AS kind, account_id, lot_id, unheld AS credits, expire_time AS at,
           0::bigint AS position, 0::numeric AS running
      FROM expired
    UNION ALL
    SELECT 1, w.account_id, s.lot_id, s.free, NULL, w.position, s.running
      FROM unnest($2::text[], $3::bigint[])
           WITH ORDINALITY AS w (account_id, amount, position)
     CROSS JOIN LATERAL ({FREE_LOTS}) s
    UNION ALL
    SELECT 2, NULL, NULL, NULL, credits_now(), NULL, NULL
     ORDER BY 1, 6, 7, 2, 5, 3"""

# Last: write the decided reservations with everything they change: the credits each lot
# newly holds, per account the credits and reservations held if available covers them (a
# conditional write), the reservations ($9: their one create_time; expire_time from it by the
# microsecond; $21: the price of a hold of a feature, else NULL; $22: the member of a hold on
# a pool, else NULL, whose row a trigger (migration 0014) adds it to) with their draws, and the
# keys with their responses. One row per account
# updated, then one row of counts (account_id NULL).
PLACE = f"""
    WITH lots_held AS (
        UPDATE credit_lots l SET held = l.held + c.held
          FROM unnest($1::bigint[], $2::bigint[]) AS c (lot_id, held)
         WHERE l.lot_id = c.lot_id AND l.lot_id = ANY($1::bigint[])
        RETURNING 1
    ), held AS (
        UPDATE accounts a
           SET reserved = a.reserved + h.held,
               active_reservation_count = a.active_reservation_count + h.reservations,
               update_time = credits_now()
          FROM unnest($3::text[], $4::bigint[], $5::bigint[])
               AS h (account_id, held, reservations)
         WHERE a.account_id = h.account_id AND a.account_id = ANY($3::text[])
           AND a.balance - a.reserved + a.credit_limit >= h.held
        RETURNING {A_ACCOUNT}
    ), placed AS (
        INSERT INTO reservations (reservation_id, account_id, amount, status,
                                  create_time, expire_time, metadata, actor, price,
                                  member_account_id)
        SELECT r.reservation_id, r.account_id, r.amount, 'ACTIVE', $9::timestamptz,
               $9::timestamptz + r.ttl_us * interval '1 microsecond',
               CAST(r.metadata AS jsonb), r.actor, CAST(r.price AS jsonb), r.member
          FROM unnest($6::uuid[], $7::text[], $8::bigint[], $10::bigint[], $11::text[],
                      $12::text[], $21::text[], $22::text[])
               AS r (reservation_id, account_id, amount, ttl_us, metadata, actor, price,
                     member)
        RETURNING 1
    ), drawn AS (
        INSERT INTO reservation_lots (reservation_id, lot_id, held)
        SELECT * FROM unnest($13::uuid[], $14::bigint[], $15::bigint[])
        RETURNING 1
    ), completed AS ({STORE_KEYS.format("$16", "$17", "$18", "$19", "$20")}
        RETURNING 1
    )
    SELECT {ACCOUNT}, 0::bigint AS lots, 0::bigint AS reservations, 0::bigint AS draws,
           0::bigint AS keys
      FROM held
    UNION ALL
    SELECT {_NO_ACCOUNT}, (SELECT count(*) FROM lots_held), (SELECT count(*) FROM placed),
           (SELECT count(*) FROM drawn), (SELECT count(*) FROM completed)"""

# A group of Commits or Releases, first: lock the reservations (in id order) with their draws,
# then the accounts of those still ACTIVE and not due (in account order), and the clock. A
# reservation's row has its reservation_id; an account's row has none.
LOCK_FOR_SETTLING = f"""
    WITH h AS MATERIALIZED (
        SELECT {RESERVATION}, expire_time <= credits_now() AS is_due
          FROM reservations WHERE reservation_id = ANY($1::uuid[])
         ORDER BY reservation_id FOR UPDATE
    ), a AS MATERIALIZED (
        SELECT {ACCOUNT} FROM accounts
         WHERE account_id IN (SELECT account_id FROM h
                               WHERE status = 'ACTIVE' AND NOT is_due)
         ORDER BY account_id FOR UPDATE
    )
    SELECT h.reservation_id, h.account_id, h.amount, h.status, h.committed_amount,
           h.create_time, h.expire_time, h.finish_time, h.metadata, h.release_reason,
           h.refunded_amount, h.price, h.member_account_id,
           h.is_due, d.draw_lot_ids, d.draw_held, d.draw_consumed, credits_now() AS now,
           NULL::bigint AS balance, NULL::bigint AS reserved,
           NULL::bigint AS active_reservation_count, NULL::bigint AS lifetime_granted,
           NULL::bigint AS lifetime_used, NULL::bigint AS lifetime_expired,
           NULL::bigint AS credit_limit, NULL::bigint AS debt
      FROM h LEFT JOIN LATERAL (
           SELECT array_agg(d.lot_id ORDER BY {CONSUMPTION_ORDER}) AS draw_lot_ids,
                  array_agg(d.held ORDER BY {CONSUMPTION_ORDER}) AS draw_held,
                  array_agg(d.consumed ORDER BY {CONSUMPTION_ORDER}) AS draw_consumed
             FROM {DRAWS_AND_LOTS}
            WHERE d.reservation_id = h.reservation_id::uuid) d ON true
    UNION ALL
    SELECT NULL, account_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           NULL, NULL, NULL, NULL, NULL, balance, reserved, active_reservation_count,
           lifetime_granted, lifetime_used, lifetime_expired, credit_limit, debt
      FROM a"""

# Then: expire the locked accounts' due lots (kind 0), which of the lots $2 that reservations
# give credits back to are expired (kind 1), and which of the accounts $3 have a lot with free
# credits, unexpired (kind 2: a commit taking credits beyond its draws must take those first).
EXPIRE_AND_CHECK = f"""
    WITH expired AS ({EXPIRE_DUE.format(account_ids="$1::text[]")})
    SELECT 0 AS kind, account_id, lot_id, unheld, expire_time FROM expired
    UNION ALL
    SELECT 1, NULL, lot_id, NULL, NULL FROM credit_lots
     WHERE lot_id = ANY($2::bigint[]) AND expired_time IS NOT NULL
    UNION ALL
    SELECT 2, w.account_id, NULL, NULL, NULL FROM unnest($3::text[]) AS w (account_id)
     WHERE EXISTS (SELECT FROM credit_lots l
                    WHERE l.account_id = w.account_id AND l.remaining > 0
                      AND l.remaining > l.held AND l.expired_time IS NULL
                      AND coalesce(l.expire_time, 'infinity') > credits_now())
     ORDER BY 1, 2, 5, 3"""

# The group writes' first step: lots $1 move their held and remaining credits by $2 and $3.
_LOTS_CHANGED = """lots_changed AS (
        UPDATE credit_lots l
           SET held = l.held + c.held_delta, remaining = l.remaining + c.remaining_delta
          FROM unnest($1::bigint[], $2::bigint[], $3::bigint[])
               AS c (lot_id, held_delta, remaining_delta)
         WHERE l.lot_id = c.lot_id AND l.lot_id = ANY($1::bigint[])
        RETURNING 1
    )"""

# A group of Commits, last: the lots' changes; per account the credits held and used, the
# reservations and what went into debt, if available covers it (conditional); each
# reservation's compare-and-set from ACTIVE to COMMITTED with what it consumed per lot (and
# beyond its lots); the USAGE entries (with the feature, units and card version of a hold of a
# feature, else NULLs; a trigger adds them to the usage rollups). Kind 0: an account's
# new balance; kind 1: a USAGE entry's id; kind 2: the counts of rows written.
CAPTURE = f"""
    WITH {_LOTS_CHANGED}, captured AS (
        UPDATE accounts a
           SET balance = a.balance - c.used,
               reserved = a.reserved - c.held,
               active_reservation_count = a.active_reservation_count - c.reservations,
               lifetime_used = a.lifetime_used + c.used,
               debt = a.debt + c.debt,
               update_time = credits_now()
          FROM unnest($4::text[], $5::bigint[], $6::bigint[], $7::bigint[], $19::bigint[])
               AS c (account_id, held, used, reservations, debt)
         WHERE a.account_id = c.account_id AND a.account_id = ANY($4::text[])
           AND (c.used <= c.held OR a.balance - c.used + a.credit_limit >= a.reserved - c.held)
        RETURNING {A_ACCOUNT}
    ), finished AS (
        UPDATE reservations r
           SET status = 'COMMITTED', committed_amount = c.amount, debt_amount = c.debt,
               finish_time = credits_now()
          FROM unnest($8::uuid[], $9::bigint[], $20::bigint[]) AS c (reservation_id, amount, debt)
         WHERE r.reservation_id = c.reservation_id
           AND r.reservation_id = ANY($8::uuid[]) AND r.status = 'ACTIVE'
        RETURNING r.reservation_id
    ), recorded AS (
        UPDATE reservation_lots d
           SET consumed = u.consumed
          FROM unnest($10::uuid[], $11::bigint[], $12::bigint[])
               AS u (reservation_id, lot_id, consumed)
         WHERE d.reservation_id = u.reservation_id AND d.lot_id = u.lot_id
           AND d.reservation_id = ANY($10::uuid[])
           AND u.reservation_id IN (SELECT reservation_id FROM finished)
        RETURNING 1
    ), entries AS (
        INSERT INTO ledger_entries (account_id, entry_type, amount, balance_after,
                                    reservation_id, metadata, actor, feature, units,
                                    rate_card_version)
        SELECT u.account_id, 'USAGE', -u.amount, u.balance_after, u.reservation_id,
               CAST(u.metadata AS jsonb), u.actor, u.feature, u.units, u.rate_card_version
          FROM unnest($13::text[], $14::bigint[], $15::bigint[], $16::uuid[],
                      $17::text[], $18::text[], $21::text[], $22::bigint[], $23::text[])
               WITH ORDINALITY AS u (account_id, amount, balance_after, reservation_id,
                                     metadata, actor, feature, units, rate_card_version,
                                     position)
         ORDER BY u.position
        RETURNING reservation_id::text AS reservation_id, entry_id
    )
    SELECT 0 AS kind, {ACCOUNT}, NULL::text AS reservation_id, NULL::bigint AS entry_id,
           NULL::bigint AS lots, NULL::bigint AS reservations, NULL::bigint AS draws
      FROM captured
    UNION ALL
    SELECT 1, {_NO_ACCOUNT}, reservation_id, entry_id, NULL, NULL, NULL FROM entries
    UNION ALL
    SELECT 2, {_NO_ACCOUNT}, NULL, NULL, (SELECT count(*) FROM lots_changed),
           (SELECT count(*) FROM finished), (SELECT count(*) FROM recorded)"""

# A group of Releases, last: the lots' changes, per account the credits and reservations it
# holds no more, and each reservation's compare-and-set from ACTIVE to RELEASED with its
# reason. One row per account, then one row of counts (account_id NULL).
RELEASE = f"""
    WITH {_LOTS_CHANGED}, unheld AS (
        UPDATE accounts a
           SET reserved = a.reserved - c.held,
               active_reservation_count = a.active_reservation_count - c.reservations,
               update_time = credits_now()
          FROM unnest($4::text[], $5::bigint[], $6::bigint[])
               AS c (account_id, held, reservations)
         WHERE a.account_id = c.account_id AND a.account_id = ANY($4::text[])
        RETURNING {A_ACCOUNT}
    ), finished AS (
        UPDATE reservations r
           SET status = 'RELEASED', release_reason = c.reason, finish_time = credits_now()
          FROM unnest($7::uuid[], $8::text[]) AS c (reservation_id, reason)
         WHERE r.reservation_id = c.reservation_id
           AND r.reservation_id = ANY($7::uuid[]) AND r.status = 'ACTIVE'
        RETURNING 1
    )
    SELECT {ACCOUNT}, NULL::bigint AS lots, NULL::bigint AS reservations FROM unheld
    UNION ALL
    SELECT {_NO_ACCOUNT}, (SELECT count(*) FROM lots_changed), (SELECT count(*) FROM finished)"""
