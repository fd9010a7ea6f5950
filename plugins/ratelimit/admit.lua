-- Admit one request for an account, or refuse it, and report the window: the whole check in one round trip.
--
-- KEYS[1]  the account's moving window: a list of "<unix seconds> <tokens>" entries, newest first
-- KEYS[2]  the window's running totals: a hash {n = entries in KEYS[1], used = their tokens}
-- ARGV[1]  requests allowed in the window
-- ARGV[2]  the window, in seconds
-- ARGV[3]  tokens allowed in the window (0: no token limit)
-- ARGV[4]  this request's tokens
--
-- Returns {admitted (1 or 0), requests in the window, tokens in the window, ms until the oldest entry leaves}.
-- The clock is Redis's own, so gateways on hosts whose clocks disagree still share one exact window.
--
-- The totals keep each call O(1) however high the limit: entries that left the window are popped from the
-- old end and subtracted, instead of the whole list being read and added up on every request.

local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local max_requests = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local max_tokens = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local start = now - window

local function parse(entry)
    local sep = string.find(entry, ' ', 1, true)
    return tonumber(string.sub(entry, 1, sep - 1)), tonumber(string.sub(entry, sep + 1))
end

local count = redis.call('LLEN', KEYS[1])
local totals = redis.call('HMGET', KEYS[2], 'n', 'used')
local used = tonumber(totals[2])
local rebuilt = false
if tonumber(totals[1]) ~= count or used == nil then
    -- No totals yet (a window written before they existed, or one of the two keys expired first): add up once.
    used = 0
    for _, entry in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
        local _, tokens = parse(entry)
        used = used + tokens
    end
    rebuilt = true
end

local popped = false
local oldest = nil
while count > 0 do
    local at, tokens = parse(redis.call('LINDEX', KEYS[1], -1))
    if at > start then
        oldest = at
        break
    end
    redis.call('RPOP', KEYS[1])
    count = count - 1
    used = used - tokens
    popped = true
end

local admitted = count < max_requests and (max_tokens == 0 or used + cost <= max_tokens)
if admitted then
    redis.call('LPUSH', KEYS[1], string.format('%.6f %d', now, cost))
    count = count + 1
    used = used + cost
    oldest = oldest or now
    redis.call('HSET', KEYS[2], 'n', count, 'used', string.format('%d', used))
    redis.call('EXPIRE', KEYS[1], math.ceil(window) + 1)
    redis.call('EXPIRE', KEYS[2], math.ceil(window) + 1)
elseif count == 0 then
    redis.call('DEL', KEYS[2])
elseif popped or rebuilt then
    redis.call('HSET', KEYS[2], 'n', count, 'used', string.format('%d', used))
    -- A refusal does not extend the window's life: the totals expire with the list.
    local ttl = redis.call('PTTL', KEYS[1])
    if ttl > 0 then
        redis.call('PEXPIRE', KEYS[2], ttl)
    end
end

local reset_ms = 0
if oldest then
    reset_ms = math.ceil((oldest + window - now) * 1000)
end
return {admitted and 1 or 0, count, used, reset_ms}
