-- Admit one request for an account, or refuse it, and report the window: the whole check in one round trip.
--
-- KEYS[1]  the account's moving window: a list of "<unix seconds> <tokens>" entries, newest first
-- ARGV[1]  requests allowed in the window
-- ARGV[2]  the window, in seconds
-- ARGV[3]  tokens allowed in the window (0: no token limit)
-- ARGV[4]  this request's tokens
--
-- Returns {admitted (1 or 0), requests in the window, tokens in the window, ms until the oldest entry leaves}.
-- The clock is Redis's own, so gateways on hosts whose clocks disagree still share one exact window.

local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local max_requests = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local max_tokens = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local start = now - window

-- Admitted requests are at most max_requests per window, so this walk is short; entries that have left
-- the window are cut off on the way.
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
local count, used, oldest = 0, 0, nil
for i, entry in ipairs(entries) do
    local sep = string.find(entry, ' ', 1, true)
    local at = tonumber(string.sub(entry, 1, sep - 1))
    if at <= start then
        if i == 1 then
            redis.call('DEL', KEYS[1])
        else
            redis.call('LTRIM', KEYS[1], 0, i - 2)
        end
        break
    end
    count = count + 1
    used = used + tonumber(string.sub(entry, sep + 1))
    oldest = at
end

local admitted = count < max_requests and (max_tokens == 0 or used + cost <= max_tokens)
if admitted then
    redis.call('LPUSH', KEYS[1], string.format('%.6f %d', now, cost))
    redis.call('EXPIRE', KEYS[1], math.ceil(window) + 1)
    count = count + 1
    used = used + cost
    oldest = oldest or now
end

local reset_ms = 0
if oldest then
    reset_ms = math.ceil((oldest + window - now) * 1000)
end
return {admitted and 1 or 0, count, used, reset_ms}
