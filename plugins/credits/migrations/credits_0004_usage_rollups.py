"""credits: the usage roll-ups the admins' overview reads (plugins/credits/rollups.py), filled from the usage
rows already there, and `credits_settle` re-created to add each usage row to them in its transaction

Revision ID: credits_0004
Revises: credits_0003
Create Date: 2026-12-03

`usage_daily` (day, model, route, shard = account_id % 4) and `usage_monthly` (month, account_id) hold the
sums of the usage rows they cover; the procedure is credits_0003's with the two upserts before its COMMIT.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "credits_0004"
down_revision = "credits_0003"
branch_labels = None
depends_on = None

SHARDS = 4  # plugins/credits/rollups.py
_SUMS = ("requests", "prompt_tokens", "completion_tokens", "charged_milli")

# credits_0003's, with the roll-ups added last: after the balance row, as lease_rows.write_batch does.
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
        INSERT INTO usage_monthly (month, account_id, requests, prompt_tokens, completion_tokens, charged_milli)
        VALUES (p_day - INTERVAL (DAYOFMONTH(p_day) - 1) DAY, p_account, 1, p_prompt, p_completion, v_charged)
        ON DUPLICATE KEY UPDATE requests = requests + 1, prompt_tokens = prompt_tokens + p_prompt,
            completion_tokens = completion_tokens + p_completion, charged_milli = charged_milli + v_charged;
        INSERT INTO usage_daily
               (day, model, route, shard, requests, prompt_tokens, completion_tokens, charged_milli)
        VALUES (p_day, p_model, p_route, p_account MOD 4, 1, p_prompt, p_completion, v_charged)
        ON DUPLICATE KEY UPDATE requests = requests + 1, prompt_tokens = prompt_tokens + p_prompt,
            completion_tokens = completion_tokens + p_completion, charged_milli = charged_milli + v_charged;
        COMMIT;
        SELECT 1, v_balance, v_tier, v_charged, v_row, v_crossed;
    END IF;
END
"""

# (the month's first day, the shard) of a usage row, per dialect.
_MONTH = {"sqlite": "date(day, 'start of month')", "mysql": "day - INTERVAL (DAYOFMONTH(day) - 1) DAY"}
_SHARD = {"sqlite": f"account_id % {SHARDS}", "mysql": f"MOD(account_id, {SHARDS})"}


def _sums() -> list[sa.Column[int]]:
    return [sa.Column(name, sa.BigInteger(), nullable=False) for name in _SUMS]


def upgrade() -> None:
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("route", sa.String(16), primary_key=True),
        sa.Column("shard", sa.SmallInteger(), primary_key=True, autoincrement=False),
        *_sums(),
        mysql_charset="utf8mb4",
    )
    op.create_table(
        "usage_monthly",
        sa.Column("month", sa.Date(), primary_key=True),
        sa.Column("account_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        *_sums(),
        mysql_charset="utf8mb4",
    )
    dialect = "sqlite" if op.get_bind().dialect.name == "sqlite" else "mysql"
    shard, month = _SHARD[dialect], _MONTH[dialect]
    sums = "COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_milli)"
    op.execute(
        f"INSERT INTO usage_daily (day, model, route, shard, {', '.join(_SUMS)}) "
        f"SELECT day, model, route, {shard}, {sums} FROM usage_records GROUP BY day, model, route, {shard}"
    )
    op.execute(
        f"INSERT INTO usage_monthly (month, account_id, {', '.join(_SUMS)}) "
        f"SELECT {month}, account_id, {sums} FROM usage_records GROUP BY {month}, account_id"
    )
    if dialect != "mysql":
        return
    op.execute("DROP PROCEDURE IF EXISTS credits_settle")
    op.execute(SETTLE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "mysql":
        # Back to credits_0003's procedure, from that revision's own file.
        path = Path(__file__).with_name("credits_0003_spend_scopes.py")
        spec = importlib.util.spec_from_file_location("credits_0003_spend_scopes", path)
        assert spec is not None and spec.loader is not None
        previous = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(previous)
        op.execute("DROP PROCEDURE IF EXISTS credits_settle")
        op.execute(previous.SETTLE)
    op.drop_table("usage_monthly")
    op.drop_table("usage_daily")
