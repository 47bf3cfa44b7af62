-- decide.lua: halt-envoy's decisions on the Redis server (pkg/backends/redis).
--
-- A line-by-line port of pkg/algorithms; see script.go for the wire format of ARGV[1],
-- of the state and of the reply. The numbers marked "-- halt:NAME" are a wire format
-- shared with Go: the store replaces each placeholder with the Go constant when it loads
-- this file (backends.Inject), so edit the constants in pkg/algorithms, never here.

-- Algorithm numbers (algorithms.FixedWindow, ...).
local FIXED_WINDOW = 0 -- halt:fixed_window
local TOKEN_BUCKET = 0 -- halt:token_bucket
local SLIDING_WINDOW = 0 -- halt:sliding_window
local SLIDING_WINDOW_COUNTER = 0 -- halt:sliding_window_counter
local LEAKY_BUCKET = 0 -- halt:leaky_bucket
local CALENDAR = 0 -- halt:calendar
local PENALTY = 0 -- halt:penalty
local ONCE = 0 -- halt:once
-- algorithms.MaxCount: counters saturate here.
local MAXC = 0 -- halt:max_count
-- algorithms.MaxSlidingLog: the longest sliding log a stored state may hold.
local MAXLOG = 0 -- halt:max_sliding_log
-- algorithms.MaxSkew: how far ahead of an op's now a state's time is trusted.
local MAXSKEW = 0 -- halt:max_skew
local floor = math.floor
local fmt = string.format

local function satadd(a, b)
  if a > MAXC - b then return MAXC end
  return a + b
end

local function wstart(now, p)
  return now - (now % p)
end

local function ceildiv(a, b)
  if a <= 0 then return 0 end
  return floor((a + b - 1) / b)
end

-- algorithms.At: the time an op at now is decided at against a state changed at t.
local function at_(now, t)
  if t > now and t - now <= MAXSKEW then return t end
  return now
end

-- algorithms.skewTTL
local function skewttl(ttl, at, now)
  if ttl <= 0 then return ttl end
  return ttl + at - now
end

local mmin, mmax = math.min, math.max
-- nd is what the op being decided asks to fit (need), set per op below.
local nd = 0

-- need: what a decision asks to fit (a check asks for one unit with NeedsUnit).
local function need(cost, unit)
  if cost > 0 then return cost end
  if unit then return 1 end
  return 0
end

-- room: what a charge that does not fit may still record (algorithms.room).
local function room(used, limit, md)
  local r = limit + md - used
  if r > 0 then return r end
  return 0
end

-- Every decision returns allowed, limit, remaining, reset, retry, delay, ttl and debt.
-- rec is true when a charge that does not fit is recorded (Limit.Drain or Report, cost
-- > 0), rep when the op is report-only (never refused), md the debt allowed.
local function fixed(s, now, R, P, cost, rep)
  local at = at_(now, s[3])
  local start = wstart(at, P)
  local changed = false
  if s[1] == start then
  elseif s[1] > start and s[1] < start + P * 2 then
    start = s[1]
  else
    s[1] = start; s[2] = 0; changed = true
  end
  local reset = start + P - at
  local allowed = false
  if cost < 0 then
    local b = mmax(mmin(s[2], R) + cost, 0)
    if b ~= s[2] then s[2] = b; changed = true end
    allowed = true
  else
    s[2] = satadd(s[2], cost)
    allowed = s[2] - cost + nd <= R
    if allowed and cost > 0 then changed = true end
    allowed = allowed or rep
  end
  if changed then s[3] = at end
  local rem = mmax(R - s[2], 0)
  local retry = 0
  if cost >= 0 then
    if nd > R then retry = -1
    elseif (not allowed) or rem < nd then retry = reset end
  end
  local al = 0
  if allowed then al = 1 end
  return al, R, rem, reset, retry, 0, skewttl(reset, at, now), 0
end

local function calendar(s, now, R, WS, WE, cost, rec, rep, md)
  local at = at_(now, s[3])
  if at ~= now and s[1] >= WE and s[4] > s[1] then
    WS = s[1]; WE = s[4]
  end
  local changed = false
  if s[1] ~= WS then
    if not (s[1] > WS and s[1] < WE) then
      s[1] = WS; s[2] = 0; changed = true
    end
  end
  local reset = WE - at
  if reset < 0 then reset = 0 end
  local allowed = false
  if cost < 0 then
    local b = mmax(s[2] + cost, 0)
    if b ~= s[2] then s[2] = b; changed = true end
    allowed = true
  elseif s[2] + nd <= R then
    s[2] = s[2] + cost; allowed = true
    if cost > 0 then changed = true end
  else
    if rec then
      local take = mmin(cost, room(s[2], R, md))
      if take > 0 then s[2] = s[2] + take; changed = true end
    end
    allowed = rep
  end
  if changed then s[3] = at; s[4] = WE end
  local rem = mmax(R - s[2], 0)
  local retry = 0
  if cost >= 0 then
    if nd > R then retry = -1
    elseif (not allowed) or rem < nd then retry = reset end
  end
  local al = 0
  if allowed then al = 1 end
  return al, R, rem, reset, retry, 0, skewttl(reset, at, now), mmax(s[2] - R, 0)
end

local function gcra(s, now, R, P, burst, maxdelay, cost, shape, rec, rep, md)
  local cap = R
  if burst > 0 then cap = burst end
  if R <= 0 or cap <= 0 then
    if cost < 0 or rep then return 1, cap, 0, 0, -1, 0, 0, 0 end
    return 0, cap, 0, 0, -1, 0, 0, 0
  end
  local at = at_(now, s[2])
  local t = ceildiv(P, R)
  local tau = cap * t
  local most = tau + md * t
  local tat = s[1]
  if tat < at then tat = at end
  local backlog = tat - at
  if backlog > most then backlog = most end
  if cost < 0 then
    local left = 0
    if -cost < ceildiv(backlog, t) then left = backlog + cost * t end
    if left ~= backlog then s[1] = at + left; s[2] = at end
    return 1, cap, floor(mmax(tau - left, 0) / t), left, 0, 0, skewttl(left, at, now), ceildiv(left - tau, t)
  end
  local shaping = shape and maxdelay > 0 and not rep
  local waitok = (not shaping) or backlog <= maxdelay
  if nd <= cap and backlog + nd * t <= tau and waitok then
    local nxt = backlog + cost * t
    if cost > 0 then s[1] = at + nxt; s[2] = at end
    local delay = 0
    if shaping then delay = backlog end
    local retry = 0
    local again = nxt + nd * t
    if again > tau then retry = again - tau end
    if shaping and nxt - maxdelay > retry then retry = nxt - maxdelay end
    return 1, cap, floor((tau - nxt) / t), nxt, retry, delay, skewttl(nxt, at, now), 0
  end
  if rec then
    local take = mmin(cost, floor((most - backlog) / t))
    if take > 0 then
      backlog = backlog + take * t
      s[1] = at + backlog; s[2] = at
    end
  end
  local al = 0
  if rep then al = 1 end
  local rem = floor(mmax(tau - backlog, 0) / t)
  local debt = ceildiv(backlog - tau, t)
  local ttl = skewttl(backlog, at, now)
  if nd > cap then return al, cap, rem, backlog, -1, 0, ttl, debt end
  local retry = backlog + nd * t - tau
  if shaping and backlog - maxdelay > retry then retry = backlog - maxdelay end
  return al, cap, rem, backlog, retry, 0, ttl, debt
end

-- lg = {at = {...}, c = {...}, n = count, dirty = bool}; s[1] is the state's time.
local function sliding(s, lg, now, R, P, cost, rec, rep, md)
  local t = at_(now, s[1])
  local cut = t - P
  local at, c, n = lg.at, lg.c, lg.n
  local drop = 0
  while drop < n and at[drop + 1] <= cut do drop = drop + 1 end
  local changed = drop > 0
  if drop > 0 then
    for i = 1, n - drop do
      at[i] = at[i + drop]; c[i] = c[i + drop]
    end
    for i = n - drop + 1, n do
      at[i] = nil; c[i] = nil
    end
    n = n - drop
  end
  local used = 0
  for i = 1, n do used = used + c[i] end
  local allowed = false
  local add = 0
  if cost < 0 then
    local q = -cost
    while q > 0 and n > 0 do
      local take = mmin(c[n], q)
      c[n] = c[n] - take; used = used - take; q = q - take
      if c[n] == 0 then at[n] = nil; c[n] = nil; n = n - 1 end
      changed = true
    end
    allowed = true
  elseif used + nd <= R then
    allowed = true
    add = cost
  else
    if rec then add = mmin(cost, room(used, R, md)) end
    allowed = rep
  end
  if add > 0 then
    if n > 0 and at[n] >= t then
      c[n] = c[n] + add
    else
      n = n + 1; at[n] = t; c[n] = add
    end
    used = used + add
    changed = true
  end
  local retry = 0
  if cost >= 0 then
    if nd > R then
      retry = -1
    elseif used + nd > R then
      local want = used + nd - R
      for i = 1, n do
        want = want - c[i]
        if want <= 0 then
          retry = at[i] + P - t
          break
        end
      end
    end
  end
  lg.n = n
  if changed then lg.dirty = true; s[1] = t end
  s[2] = used
  local reset = 0
  if n > 0 then reset = at[n] + P - t end
  local al = 0
  if allowed then al = 1 end
  return al, R, mmax(R - used, 0), reset, retry, 0, skewttl(reset, t, now), mmax(used - R, 0)
end

local function swcretry(s, now, cur, p, limit, cost)
  local room = limit - s[2] - cost
  if room >= 0 and s[3] > 0 then
    local e = p - floor((room + 1) * p / s[3])
    if e < 0 then e = 0 end
    local i = 0
    while i < 8 and e < p and floor(s[3] * (p - e) / p) > room do
      e = e + 1; i = i + 1
    end
    return cur + e - now
  end
  room = limit - cost
  if s[2] == 0 then return cur + p - now end
  local e = p - floor((room + 1) * p / s[2])
  if e < 0 then e = 0 end
  local i = 0
  while i < 8 and e < p and floor(s[2] * (p - e) / p) > room do
    e = e + 1; i = i + 1
  end
  return cur + p + e - now
end

local function swc(s, now, R, P, cost, rec, rep, md)
  local at = at_(now, s[4])
  local cur = wstart(at, P)
  local changed = false
  if s[1] == cur then
  elseif s[1] == cur - P then
    s[3] = s[2]; s[1] = cur; s[2] = 0; changed = true
  elseif s[1] > cur and s[1] < cur + 2 * P then
    cur = s[1]
  else
    s[1] = cur; s[2] = 0; s[3] = 0; changed = true
  end
  local el = at - cur
  if el < 0 then el = 0 end
  local w = floor(s[3] * (P - el) / P)
  local allowed = false
  if cost < 0 then
    local b = mmax(s[2] + cost, 0)
    if b ~= s[2] then s[2] = b; changed = true end
    allowed = true
  elseif w + s[2] + nd <= R then
    if cost > 0 then s[2] = satadd(s[2], cost); changed = true end
    allowed = true
  else
    if rec then
      local take = mmin(cost, room(w + s[2], R, md))
      if take > 0 then s[2] = s[2] + take; changed = true end
    end
    allowed = rep
  end
  if changed then s[4] = at end
  local retry = 0
  if cost >= 0 then
    if nd > R then
      retry = -1
    elseif w + s[2] + nd > R then
      retry = swcretry(s, at, cur, P, R, nd)
    end
  end
  local reset = 0
  if s[2] > 0 then
    reset = cur + 2 * P - at
  elseif s[3] > 0 then
    reset = cur + P - at
  end
  local al = 0
  if allowed then al = 1 end
  return al, R, mmax(R - w - s[2], 0), reset, retry, 0, skewttl(reset, at, now), mmax(w + s[2] - R, 0)
end

local function penalty(s, now, R, P, steps, ladder, cost)
  if cost < 0 then cost = 0 end
  local at = at_(now, s[4])
  if at >= s[1] and s[4] ~= 0 and P > 0 and at > s[4] then
    local from = s[4]
    if s[1] > s[4] then from = s[1] end
    local quiet = at - from
    if quiet >= P then
      s[3] = 0
      local st = floor(quiet / P)
      if st >= s[2] then s[2] = 0 else s[2] = s[2] - st end
      s[4] = from + st * P
    end
  end
  if cost > 0 and at >= s[1] then
    s[3] = satadd(s[3], cost)
    s[4] = at
    if s[3] >= R then
      if s[2] < steps then s[2] = s[2] + 1 end
      s[1] = at + ladder[s[2]]
      s[3] = 0
    end
  end
  local allowed, rem, reset, retry, ttl = 0, 0, 0, 0, 0
  if at < s[1] then
    reset = s[1] - at; retry = reset
  else
    allowed = 1
    rem = R - s[3]
    if rem < 0 then rem = 0 end
  end
  if s[4] ~= 0 or s[1] ~= 0 then
    local e = s[1]
    if s[4] > e then e = s[4] end
    ttl = e + (s[2] + 1) * P - at
    if ttl < 0 then ttl = 0 end
    ttl = skewttl(ttl, at, now)
  end
  return allowed, R, rem, reset, retry, 0, ttl, 0
end

-- algorithms.DecideOnce: an idempotency key's record. A: the fingerprint of the request
-- that claimed it, B: 0 while it is decided, then its decision; C: when that decision's
-- wait ends; D: the record's end. Results: allowed, phase (limit), the decision
-- (remaining), the rest of its wait (reset), ttl.
local function once(s, now, fp, wait, we, cost)
  local live = s[4] > now and s[1] ~= 0
  if cost > 0 then
    if not live then
      s[1] = fp
    elseif s[1] ~= fp then
      return 0, 3, 0, 0, 0, 0, s[4] - now, 0
    elseif s[2] ~= 0 then
      return 0, 2, s[2], mmax(s[3] - now, 0), 0, 0, s[4] - now, 0
    end
    s[2] = cost; s[3] = now + wait; s[4] = we
    return 1, 2, cost, wait, 0, 0, s[4] - now, 0
  end
  if not live then
    if cost < 0 then return 1, 0, 0, 0, 0, 0, 0, 0 end
    s[1] = fp; s[2] = 0; s[3] = 0; s[4] = we
    return 1, 0, 0, 0, 0, 0, s[4] - now, 0
  end
  if s[1] ~= fp then return 0, 3, 0, 0, 0, 0, s[4] - now, 0 end
  if s[2] == 0 then return 0, 1, 0, 0, 0, 0, s[4] - now, 0 end
  return 0, 2, s[2], mmax(s[3] - now, 0), 0, 0, s[4] - now, 0
end

local usetime = ARGV[2] == '1'
-- ARGV[3]: up to this many extra milliseconds of expiry, at random for each key written
-- (EXPIRATION_JITTER_MAX_SECONDS), from the seed ARGV[4].
local jitter = tonumber(ARGV[3]) or 0
if jitter > 0 then math.randomseed(tonumber(ARGV[4]) or 0) end
local tnow = 0
if usetime then
  local t = redis.call('TIME')
  tnow = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local unpack, pack = struct.unpack, struct.pack
local spec = ARGV[1]
local pos = 1
local out = {}

local function int(v)
  return v == floor(v) and v > -9007199254740992 and v < 9007199254740992
end

for i = 1, #KEYS do
  local key = KEYS[i]
  local now, alg, cost, R, mode, md
  now, alg, cost, R, mode, md, pos = unpack('<dddddd', spec, pos)
  if usetime then now = tnow end
  -- mode: 1 = Limit.Drain, 2 = Limit.Report, 4 = Limit.NeedsUnit (bits); md =
  -- Limit.MaxDebt.
  local rep = mode % 4 >= 2
  local rec = cost > 0 and mode % 4 > 0
  nd = need(cost, mode >= 4)
  local P, burst, maxdelay, ws, we, steps, ladder = 0, 0, 0, 0, 0, 0, nil
  if alg == TOKEN_BUCKET or alg == LEAKY_BUCKET then
    P, burst, maxdelay, pos = unpack('<ddd', spec, pos)
  elseif alg == CALENDAR then
    ws, we, pos = unpack('<dd', spec, pos)
  elseif alg == ONCE then
    P, we, pos = unpack('<dd', spec, pos)
  elseif alg == PENALTY then
    P, steps, pos = unpack('<dd', spec, pos)
    ladder = {}
    for j = 1, steps do ladder[j], pos = unpack('<d', spec, pos) end
  else
    P, pos = unpack('<d', spec, pos)
  end

  local raw = redis.pcall('GET', key)
  local code = 0
  local s, rest = nil, ''
  if type(raw) == 'table' then
    code = 2
  elseif raw then
    local len = #raw
    local b1, b2 = string.byte(raw, 1, 2)
    if len >= 34 and b1 == 104 and b2 == 50 then
      local a, b, c, d = unpack('<dddd', raw, 3)
      if int(a) and int(b) and int(c) and int(d) then
        s = {a, b, c, d}
        if len > 34 then
          local n = len >= 42 and unpack('<d', raw, 35)
          if n and int(n) and n >= 0 and n <= MAXLOG and len == 42 + 16 * n then
            rest = string.sub(raw, 35)
          else
            s = nil
          end
        end
      end
    end
    if not s then code = 3 end
  else
    s = {0, 0, 0, 0}
  end

  local lg = nil
  if s and alg == SLIDING_WINDOW then
    lg = {at = {}, c = {}, n = 0, dirty = false}
    if rest ~= '' then
      local n, p = unpack('<d', rest, 1)
      local at, cc = lg.at, lg.c
      for j = 1, n do
        at[j], cc[j], p = unpack('<dd', rest, p)
        if not (int(at[j]) and int(cc[j])) then s = nil; code = 3; break end
      end
      lg.n = n
    end
  end

  if s == nil then
    out[i] = pack('<ddddddddd', code, 0, 0, 0, 0, 0, 0, 0, 0)
  else
    local o1, o2, o3, o4 = s[1], s[2], s[3], s[4]
    local al, lim, rem, reset, retry, delay, ttl, debt
    if alg == FIXED_WINDOW then
      al, lim, rem, reset, retry, delay, ttl, debt = fixed(s, now, R, P, cost, rep)
    elseif alg == TOKEN_BUCKET then
      al, lim, rem, reset, retry, delay, ttl, debt = gcra(s, now, R, P, burst, maxdelay, cost, false, rec, rep, md)
    elseif alg == SLIDING_WINDOW then
      al, lim, rem, reset, retry, delay, ttl, debt = sliding(s, lg, now, R, P, cost, rec, rep, md)
    elseif alg == SLIDING_WINDOW_COUNTER then
      al, lim, rem, reset, retry, delay, ttl, debt = swc(s, now, R, P, cost, rec, rep, md)
    elseif alg == LEAKY_BUCKET then
      al, lim, rem, reset, retry, delay, ttl, debt = gcra(s, now, R, P, burst, maxdelay, cost, true, rec, rep, md)
    elseif alg == CALENDAR then
      al, lim, rem, reset, retry, delay, ttl, debt = calendar(s, now, R, ws, we, cost, rec, rep, md)
    elseif alg == PENALTY then
      al, lim, rem, reset, retry, delay, ttl, debt = penalty(s, now, R, P, steps, ladder, cost)
    elseif alg == ONCE then
      al, lim, rem, reset, retry, delay, ttl, debt = once(s, now, R, P, we, cost)
    else
      al, lim, rem, reset, retry, delay, ttl, debt = 0, 0, 0, 0, -1, 0, 0, 0
    end
    -- The key's time after the op (algorithms.StateTime), for the local deny cache.
    local kt = 0
    if alg == FIXED_WINDOW or alg == CALENDAR then kt = s[3]
    elseif alg == TOKEN_BUCKET or alg == LEAKY_BUCKET then kt = s[2]
    elseif alg == SLIDING_WINDOW then kt = s[1]
    elseif alg == SLIDING_WINDOW_COUNTER or alg == PENALTY then kt = s[4]
    end
    out[i] = pack('<ddddddddd', al, lim, rem, reset, retry, delay, ttl, debt, kt)

    local dirty = s[1] ~= o1 or s[2] ~= o2 or s[3] ~= o3 or s[4] ~= o4
    if lg and lg.dirty then
      dirty = true
      if lg.n == 0 then
        rest = ''
      else
        local parts = {pack('<d', lg.n)}
        for j = 1, lg.n do
          parts[j + 1] = pack('<dd', lg.at[j], lg.c[j])
        end
        rest = table.concat(parts)
      end
    end
    if dirty then
      if s[1] == 0 and s[2] == 0 and s[3] == 0 and s[4] == 0 and rest == '' then
        if raw then redis.call('DEL', key) end
      else
        local us = ttl
        if us < 1000000 then us = 1000000 end
        local ms = floor(us / 1000) + 1000
        if jitter > 0 then ms = ms + math.random(0, jitter) end
        redis.call('SET', key, 'h2' .. pack('<dddd', s[1], s[2], s[3], s[4]) .. rest, 'PX', fmt('%d', ms))
      end
    end
  end
end
return table.concat(out)
