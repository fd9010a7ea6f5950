"""credits: stored procedures for holds and settlements on MariaDB/MySQL (one round trip each)

Revision ID: credits_0002
Revises: credits_0001
Create Date: 2026-11-24

The same transactions as plugins/credits/hold_rows.py runs statement by statement on SQLite; see the
comments there. Nothing to do on SQLite, which has no procedures.
"""

from alembic import op

revision = "credits_0002"
down_revision = "credits_0001"
branch_labels = None
depends_on = None

# Takes the hold when balance - reserved covers it. Result: one row, (1,) taken or (0,) not covered.
HOLD = """
CREATE PROCEDURE credits_hold(
    IN p_id VARCHAR(32), IN p_account BIGINT, IN p_request VARCHAR(128), IN p_amount BIGINT,
    IN p_tier VARCHAR(32), IN p_now DATETIME, IN p_expires DATETIME)
MODIFIES SQL DATA
BEGIN
    DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN ROLLBACK; RESIGNAL; END;
    START TRANSACTION;
    UPDATE credit_balances
       SET reserved_milli = reserved_milli + p_amount, tier = p_tier, updated_at = p_now
     WHERE account_id = p_account AND balance_milli - reserved_milli >= p_amount;
    IF ROW_COUNT() > 0 THEN
        INSERT INTO credit_holds (id, account_id, request_id, amount_milli, created_at, expires_at)
        VALUES (p_id, p_account, p_request, p_amount, p_now, p_expires);
        COMMIT;
        SELECT 1;
    ELSE
        ROLLBACK;
        SELECT 0;
    END IF;
END
"""

# Replaces the hold with the charge (capped at what is free besides the other holds), writes the usage row
# and the ledger row, and moves the low-credit flag; `p_plans` is {"tier": plan milli-credits} as JSON.
# p_hold is ASCII (hold ids are hex) so comparing it with the column works whatever collation the
# database's default and the table's differ by.
# Result: one row (settled, balance, tier, charged, ledger row id, crossed below the low mark).
SETTLE = """
CREATE PROCEDURE credits_settle(
    IN p_hold VARCHAR(32) CHARACTER SET ascii, IN p_account BIGINT, IN p_hold_milli BIGINT, IN p_charge BIGINT,
    IN p_plans TEXT, IN p_percent INT, IN p_now DATETIME,
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
        COMMIT;
        SELECT 1, v_balance, v_tier, v_charged, v_row, v_crossed;
    END IF;
END
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "mysql":
        return
    op.execute("DROP PROCEDURE IF EXISTS credits_hold")
    op.execute(HOLD)
    op.execute("DROP PROCEDURE IF EXISTS credits_settle")
    op.execute(SETTLE)


def downgrade() -> None:
    if op.get_bind().dialect.name != "mysql":
        return
    op.execute("DROP PROCEDURE IF EXISTS credits_settle")
    op.execute("DROP PROCEDURE IF EXISTS credits_hold")
