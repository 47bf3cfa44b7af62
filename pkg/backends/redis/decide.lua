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

-- Every decision returns allowed, limit, remaining, reset, retry, delay and ttl.
local function fixed(s, now, R, P, cost)
  local at = at_(now, s[3])
  local start = wstart(at, P)
  local changed = false
  if s[1] == start then
  elseif s[1] > start and s[1] < start + P * 2 then
    start = s[1]
  else
    s[1] = start; s[2] = 0; changed = true
  end
  s[2] = satadd(s[2], cost)
  if changed or (cost > 0 and s[2] <= R) then s[3] = at end
  local reset = start + P - at
  local ttl = skewttl(reset, at, now)
  if s[2] <= R then
    local retry = 0
    if R - s[2] < cost then retry = reset end
    return 1, R, R - s[2], reset, retry, 0, ttl
  end
  if cost > R then return 0, R, 0, reset, -1, 0, ttl end
  return 0, R, 0, reset, reset, 0, ttl
end

local function calendar(s, now, R, WS, WE, cost)
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
  local allowed, retry = 0, 0
  if s[2] + cost <= R then
    s[2] = s[2] + cost; allowed = 1
    if cost > 0 then changed = true end
  elseif cost > R then
    retry = -1
  else
    retry = reset
  end
  if changed then s[3] = at; s[4] = WE end
  local rem = R - s[2]
  if rem < 0 then rem = 0 end
  if allowed == 1 and rem < cost then retry = reset end
  return allowed, R, rem, reset, retry, 0, skewttl(reset, at, now)
end

local function gcra(s, now, R, P, burst, maxdelay, cost, shape)
  local cap = R
  if burst > 0 then cap = burst end
  if R <= 0 or cap <= 0 then
    if cost == 0 then return 1, cap, 0, 0, -1, 0, 0 end
    return 0, cap, 0, 0, -1, 0, 0
  end
  local at = at_(now, s[2])
  local t = ceildiv(P, R)
  local tau = cap * t
  local tat = s[1]
  if tat < at then tat = at end
  local backlog = tat - at
  if backlog > tau then backlog = tau end
  if cost > cap then
    return 0, cap, floor((tau - backlog) / t), backlog, -1, 0, skewttl(backlog, at, now)
  end
  local nxt = backlog + cost * t
  local waitok = (not shape) or maxdelay <= 0 or backlog <= maxdelay
  if nxt <= tau and waitok then
    if cost > 0 then s[1] = at + nxt; s[2] = at end
    local delay = 0
    if shape and maxdelay > 0 then delay = backlog end
    local retry = 0
    local again = nxt + cost * t
    if again > tau then retry = again - tau end
    if shape and maxdelay > 0 and nxt - maxdelay > retry then retry = nxt - maxdelay end
    return 1, cap, floor((tau - nxt) / t), nxt, retry, delay, skewttl(nxt, at, now)
  end
  local retry = nxt - tau
  if (not waitok) and backlog - maxdelay > retry then retry = backlog - maxdelay end
  return 0, cap, floor((tau - backlog) / t), backlog, retry, 0, skewttl(backlog, at, now)
end

-- lg = {at = {...}, c = {...}, n = count, dirty = bool}; s[1] is the state's time.
local function sliding(s, lg, now, R, P, cost)
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
    lg.dirty = true
  end
  local used = 0
  for i = 1, n do used = used + c[i] end
  local allowed, retry = 0, 0
  if used + cost <= R then
    allowed = 1
    if cost > 0 then
      if n > 0 and at[n] >= t then
        c[n] = c[n] + cost
      else
        n = n + 1; at[n] = t; c[n] = cost
      end
      used = used + cost
      lg.dirty = true
      changed = true
    end
  elseif cost > R then
    retry = -1
  end
  if retry == 0 and used + cost > R then
    local need = used + cost - R
    for i = 1, n do
      need = need - c[i]
      if need <= 0 then
        retry = at[i] + P - t
        break
      end
    end
  end
  lg.n = n
  s[2] = used
  if changed then s[1] = t end
  local rem = R - used
  if rem < 0 then rem = 0 end
  local reset = 0
  if n > 0 then reset = at[n] + P - t end
  return allowed, R, rem, reset, retry, 0, skewttl(reset, t, now)
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

local function swc(s, now, R, P, cost)
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
  local allowed, retry = 0, 0
  if w + s[2] + cost <= R then
    s[2] = satadd(s[2], cost); allowed = 1
    if cost > 0 then changed = true end
  elseif cost > R then
    retry = -1
  end
  if changed then s[4] = at end
  if retry == 0 and w + s[2] + cost > R then
    retry = swcretry(s, at, cur, P, R, cost)
  end
  local rem = R - w - s[2]
  if rem < 0 then rem = 0 end
  local reset = 0
  if s[2] > 0 then
    reset = cur + 2 * P - at
  elseif s[3] > 0 then
    reset = cur + P - at
  end
  return allowed, R, rem, reset, retry, 0, skewttl(reset, at, now)
end

local function penalty(s, now, R, P, steps, ladder, cost)
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
  return allowed, R, rem, reset, retry, 0, ttl
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
  local now, alg, cost, R
  now, alg, cost, R, pos = unpack('<dddd', spec, pos)
  if usetime then now = tnow end
  local P, burst, maxdelay, ws, we, steps, ladder = 0, 0, 0, 0, 0, 0, nil
  if alg == TOKEN_BUCKET or alg == LEAKY_BUCKET then
    P, burst, maxdelay, pos = unpack('<ddd', spec, pos)
  elseif alg == CALENDAR then
    ws, we, pos = unpack('<dd', spec, pos)
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
    out[i] = pack('<dddddddd', code, 0, 0, 0, 0, 0, 0, 0)
  else
    local o1, o2, o3, o4 = s[1], s[2], s[3], s[4]
    local al, lim, rem, reset, retry, delay, ttl
    if alg == FIXED_WINDOW then
      al, lim, rem, reset, retry, delay, ttl = fixed(s, now, R, P, cost)
    elseif alg == TOKEN_BUCKET then
      al, lim, rem, reset, retry, delay, ttl = gcra(s, now, R, P, burst, maxdelay, cost, false)
    elseif alg == SLIDING_WINDOW then
      al, lim, rem, reset, retry, delay, ttl = sliding(s, lg, now, R, P, cost)
    elseif alg == SLIDING_WINDOW_COUNTER then
      al, lim, rem, reset, retry, delay, ttl = swc(s, now, R, P, cost)
    elseif alg == LEAKY_BUCKET then
      al, lim, rem, reset, retry, delay, ttl = gcra(s, now, R, P, burst, maxdelay, cost, true)
    elseif alg == CALENDAR then
      al, lim, rem, reset, retry, delay, ttl = calendar(s, now, R, ws, we, cost)
    elseif alg == PENALTY then
      al, lim, rem, reset, retry, delay, ttl = penalty(s, now, R, P, steps, ladder, cost)
    else
      al, lim, rem, reset, retry, delay, ttl = 0, 0, 0, 0, -1, 0, 0
    end
    -- The key's time after the op (algorithms.StateTime), for the local deny cache.
    local kt = 0
    if alg == FIXED_WINDOW or alg == CALENDAR then kt = s[3]
    elseif alg == TOKEN_BUCKET or alg == LEAKY_BUCKET then kt = s[2]
    elseif alg == SLIDING_WINDOW then kt = s[1]
    elseif alg == SLIDING_WINDOW_COUNTER or alg == PENALTY then kt = s[4]
    end
    out[i] = pack('<dddddddd', al, lim, rem, reset, retry, delay, ttl, kt)

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
