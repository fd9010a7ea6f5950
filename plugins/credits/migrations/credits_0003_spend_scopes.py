"""credits: spend scopes (per-key limits, later per-member) and the procedures that hold and settle against them

Revision ID: credits_0003
Revises: credits_0002
Create Date: 2026-12-01

`credits_hold` takes one more parameter, the hold's scopes as JSON (NULL: none, the request is not limited),
and answers (taken, the index of the scope that refused or -1); `credits_settle` takes `p_scoped` after
`p_now`. Without scopes both run exactly the statements of credits_0002. The statements are those
plugins/credits/hold_rows.py and scopes.py run on SQLite; see the comments there.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "credits_0003"
down_revision = "credits_0002"
branch_labels = None
depends_on = None

# p_scopes: [{"kind", "id", "period", "start", "end", "limit"}, ...] in lock order. Each scope's row takes the
# hold while spent + reserved + the hold stays within the limit; a missing row is created first, its spend
# summed from the period's usage rows. Result: (1, -1) taken, (0, -1) the balance does not cover it, (0, i)
# scope i would pass its limit.
HOLD = """
CREATE PROCEDURE credits_hold(
    IN p_id VARCHAR(32), IN p_account BIGINT, IN p_request VARCHAR(128), IN p_amount BIGINT,
    IN p_tier VARCHAR(32), IN p_now DATETIME, IN p_expires DATETIME, IN p_scopes TEXT)
MODIFIES SQL DATA
BEGIN
    DECLARE v_n, v_i, v_refused INT DEFAULT 0;
    -- ASCII (kinds and periods are): compared with the columns whatever collation the database's default and
    -- the table's differ by.
    DECLARE v_kind VARCHAR(16) CHARACTER SET ascii;
    DECLARE v_period VARCHAR(8) CHARACTER SET ascii;
    DECLARE v_scope, v_limit BIGINT;
    DECLARE v_start, v_end DATE;
    DECLARE v_at VARCHAR(16);
    DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN ROLLBACK; RESIGNAL; END;
    SET v_refused = -1;
    IF p_scopes IS NOT NULL THEN
        SET v_n = JSON_LENGTH(p_scopes);
    END IF;
    START TRANSACTION;
    WHILE v_refused < 0 AND v_i < v_n DO
        SET v_at = CONCAT('$[', v_i, '].');
        SET v_kind = JSON_VALUE(p_scopes, CONCAT(v_at, 'kind'));
        SET v_scope = CAST(JSON_VALUE(p_scopes, CONCAT(v_at, 'id')) AS SIGNED);
        SET v_period = JSON_VALUE(p_scopes, CONCAT(v_at, 'period'));
        SET v_start = CAST(JSON_VALUE(p_scopes, CONCAT(v_at, 'start')) AS DATE);
        SET v_end = CAST(JSON_VALUE(p_scopes, CONCAT(v_at, 'end')) AS DATE);
        SET v_limit = CAST(JSON_VALUE(p_scopes, CONCAT(v_at, 'limit')) AS SIGNED);
        UPDATE credit_spend_scopes
           SET reserved_milli = reserved_milli + p_amount, updated_at = p_now
         WHERE kind = v_kind AND scope_id = v_scope AND period = v_period AND period_start = v_start
           AND spent_milli + reserved_milli + p_amount <= v_limit;
        IF ROW_COUNT() = 0 THEN
            INSERT INTO credit_spend_scopes
                   (kind, scope_id, period, period_start, spent_milli, reserved_milli, updated_at)
            SELECT v_kind, v_scope, v_period, v_start, COALESCE(SUM(cost_milli), 0), 0, p_now
              FROM usage_records
             WHERE account_id = p_account AND day >= v_start AND day < v_end
               AND (CASE v_kind WHEN 'key' THEN key_id WHEN 'member' THEN user_id END) = v_scope
            ON DUPLICATE KEY UPDATE updated_at = credit_spend_scopes.updated_at;
            UPDATE credit_spend_scopes
               SET reserved_milli = reserved_milli + p_amount, updated_at = p_now
             WHERE kind = v_kind AND scope_id = v_scope AND period = v_period AND period_start = v_start
               AND spent_milli + reserved_milli + p_amount <= v_limit;
            IF ROW_COUNT() = 0 THEN
                SET v_refused = v_i;
            END IF;
        END IF;
        IF v_refused < 0 THEN
            INSERT INTO credit_scope_holds (hold_id, kind, scope_id, period, period_start, amount_milli)
            VALUES (p_id, v_kind, v_scope, v_period, v_start, p_amount);
        END IF;
        SET v_i = v_i + 1;
    END WHILE;
    IF v_refused >= 0 THEN
        ROLLBACK;
        SELECT 0, v_refused;
    ELSE
        UPDATE credit_balances
           SET reserved_milli = reserved_milli + p_amount, tier = p_tier, updated_at = p_now
         WHERE account_id = p_account AND balance_milli - reserved_milli >= p_amount;
        IF ROW_COUNT() > 0 THEN
            INSERT INTO credit_holds (id, account_id, request_id, amount_milli, created_at, expires_at)
            VALUES (p_id, p_account, p_request, p_amount, p_now, p_expires);
            COMMIT;
            SELECT 1, -1;
        ELSE
            ROLLBACK;
            SELECT 0, -1;
        END IF;
    END IF;
END
"""

# As credits_0002's, and with p_scoped: the hold's scopes give back its amount (before the balance row is
# locked, the lock order of every transaction) and are charged what it cost.
SETTLE = """
CREATE PROCEDURE credits_settle(
    IN p_hold VARCHAR(32) CHARACTER SET ascii, IN p_account BIGINT, IN p_hold_milli BIGINT, IN p_charge BIGINT,
    IN p_plans TEXT, IN p_percent INT, IN p_now DATETIME, IN p_scoped BOOL,
    IN p_request VARCHAR(128), IN p_user BIGINT, IN p_key BIGINT, IN p_model VARCHAR(200),
    IN p_endpoint VARCHAR(32), IN p_route VARCHAR(16), IN p_upstream VARCHAR(64), IN p_stream BOOL,
    IN p_prompt INT, IN p_completion INT, IN p_source VARCHAR(16), IN p_multiplier INT,
    IN p_status INT, IN p_outcome VARCHAR(32), IN p_latency INT, IN p_ttft INT, IN p_day DATE)
MODIFIES SQL DATA
BEGIN
    DECLARE v_balance, v_reserved, v_charged, v_plan BIGINT DEFAULT 0;
    DECLARE v_tier VARCHAR(32) DEFAULT NULL;
    DECLARE v_notified, v_low, v_crossed BOOL DEFAULT FALSE;
    DECLARE v_row BIGINT DEFAULT NULL;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN ROLLBACK; RESIGNAL; END;
    START TRANSACTION;
    DELETE FROM credit_holds WHERE id = p_hold;
    IF ROW_COUNT() <> 1 THEN
        ROLLBACK;
        SELECT 0, NULL, NULL, 0, NULL, 0;
    ELSE
        IF p_scoped THEN
            UPDATE credit_spend_scopes s JOIN credit_scope_holds h
                ON s.kind = h.kind AND s.scope_id = h.scope_id AND s.period = h.period
               AND s.period_start = h.period_start
               SET s.reserved_milli = s.reserved_milli - h.amount_milli
             WHERE h.hold_id = p_hold;
        END IF;
        SELECT balance_milli, reserved_milli, tier, low_notified
          INTO v_balance, v_reserved, v_tier, v_notified
          FROM credit_balances WHERE account_id = p_account FOR UPDATE;
        SET v_reserved = v_reserved - p_hold_milli;
        SET v_charged = GREATEST(LEAST(p_charge, v_balance - v_reserved), 0);
        SET v_balance = v_balance - v_charged;
        SET v_plan = COALESCE(CAST(JSON_VALUE(p_plans, CONCAT('$."', v_tier, '"')) AS SIGNED), 0);
        IF v_plan > 0 THEN
            SET v_low = v_balance * 100 < v_plan * p_percent;
            SET v_crossed = v_low AND NOT v_notified;
        ELSE
            SET v_low = v_notified;
        END IF;
        INSERT INTO usage_records (
            charge_id, request_id, account_id, user_id, key_id, model, endpoint, route, upstream, stream,
            prompt_tokens, completion_tokens, usage_source, multiplier, cost_milli, status, outcome,
            latency_ms, ttft_ms, day, created_at)
        VALUES (
            p_hold, p_request, p_account, p_user, p_key, p_model, p_endpoint, p_route, p_upstream, p_stream,
            p_prompt, p_completion, p_source, p_multiplier, v_charged, p_status, p_outcome,
            p_latency, p_ttft, p_day, p_now);
        UPDATE credit_balances
           SET balance_milli = v_balance, reserved_milli = v_reserved, low_notified = v_low, updated_at = p_now
         WHERE account_id = p_account;
        IF v_charged > 0 THEN
            INSERT INTO credit_ledger (account_id, kind, amount_milli, balance_after_milli, reference, created_at)
            VALUES (p_account, 'usage', -v_charged, v_balance, p_hold, p_now);
            SET v_row = LAST_INSERT_ID();
        END IF;
        IF p_scoped THEN
            IF v_charged > 0 THEN
                UPDATE credit_spend_scopes s JOIN credit_scope_holds h
                    ON s.kind = h.kind AND s.scope_id = h.scope_id AND s.period = h.period
                   AND s.period_start = h.period_start
                   SET s.spent_milli = s.spent_milli + v_charged
                 WHERE h.hold_id = p_hold;
            END IF;
            DELETE FROM credit_scope_holds WHERE hold_id = p_hold;
        END IF;
        COMMIT;
        SELECT 1, v_balance, v_tier, v_charged, v_row, v_crossed;
    END IF;
END
"""


def upgrade() -> None:
    op.create_table(
        "credit_spend_scopes",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("scope_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("period", sa.String(8), primary_key=True),
        sa.Column("period_start", sa.Date(), primary_key=True),
        sa.Column("spent_milli", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("reserved_milli", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        mysql_charset="utf8mb4",
    )
    op.create_table(
        "credit_scope_holds",
        sa.Column("hold_id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("scope_id", sa.BigInteger(), nullable=False),
        sa.Column("period", sa.String(8), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("amount_milli", sa.BigInteger(), nullable=False),
        mysql_charset="utf8mb4",
    )
    if op.get_bind().dialect.name != "mysql":
        return
    op.execute("DROP PROCEDURE IF EXISTS credits_hold")
    op.execute(HOLD)
    op.execute("DROP PROCEDURE IF EXISTS credits_settle")
    op.execute(SETTLE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "mysql":
        # Back to credits_0002's procedures, from that revision's own file.
        path = Path(__file__).with_name("credits_0002_procedures.py")
        spec = importlib.util.spec_from_file_location("credits_0002_procedures", path)
        assert spec is not None and spec.loader is not None
        previous = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(previous)
        previous.upgrade()
    op.drop_table("credit_scope_holds")
    op.drop_table("credit_spend_scopes")
