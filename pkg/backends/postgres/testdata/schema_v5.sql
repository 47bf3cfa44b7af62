-- schema.sql: the PostgreSQL schema of halt-envoy's state (pkg/backends/postgres),
-- schema version 5 (postgres.SchemaVersion).
--
-- Read by migrate (Open, `halt-envoy migrate`), which runs the statements below in order
-- in one transaction, each starting at its "-- statement:" line. The names are those of
-- the default table: migrate replaces "halt_state", "halt_state_apply" and
-- "halt_state_expires_idx" with the names of the configured table=, and each number
-- marked "/*halt:NAME*/" or "-- halt:NAME" with the Go constant of that name
-- (backends.Inject), so the algorithm numbers and bounds have one source, pkg/algorithms.
-- In the function they are literals, as in version 1 (a CONSTANT would be initialised at
-- every call). Changing the function's text means bumping SchemaVersion, so that existing
-- deployments migrate.

-- statement: create table halt_schema_version
CREATE TABLE IF NOT EXISTS halt_schema_version (table_name text PRIMARY KEY, version integer NOT NULL);

-- statement: create table "halt_state"
CREATE TABLE IF NOT EXISTS "halt_state" (
	key        text PRIMARY KEY,
	a          bigint NOT NULL DEFAULT 0,
	b          bigint NOT NULL DEFAULT 0,
	c          bigint NOT NULL DEFAULT 0,
	d          bigint NOT NULL DEFAULT 0,
	log        bigint[],
	expires_at bigint NOT NULL
);

-- statement: create index "halt_state_expires_idx"
CREATE INDEX IF NOT EXISTS "halt_state_expires_idx" ON "halt_state" (expires_at);

-- statement: create function "halt_state_apply"
-- The decision function: a line-by-line port of pkg/algorithms (same integer arithmetic,
-- same float8 multiply-then-divide for the sliding counter), applied to every op of one
-- Apply in one call. p holds op_stride parameters per op: algorithm, requests, period,
-- burst, max_delay, window start, window end, cost (negative: a refund), steps, mode (1 =
-- Limit.Drain, 2 = Limit.Report, 4 = Limit.NeedsUnit, added), max_debt, then the ladder;
-- the result holds
-- res_stride values per op: op index, allowed (0/1), limit, remaining, reset_after,
-- retry_after, delay, ttl, debt. layout is the schema version whose strides the caller
-- sends: a caller of another layout is refused rather than misread. The caller sorts ops
-- by key, so every transaction takes its row locks in the same order and concurrent
-- batches cannot deadlock; ops on one key keep their order.
--
-- Versions 1 to 4 had a three-argument function with shorter strides; it is left in
-- place by the migration (replicas of those versions keep calling it during a rolling
-- upgrade) and is not part of a new schema.
CREATE OR REPLACE FUNCTION "halt_state_apply"(keys text[], p bigint[], now_us bigint, layout integer) RETURNS bigint[]
LANGUAGE plpgsql AS $halt$
DECLARE
	maxcount CONSTANT bigint := 0; -- halt:max_count
	n int := coalesce(array_length(keys, 1), 0);
	res bigint[];
	i int; o int; j int; m int;
	k text;
	alg bigint; req bigint; per bigint; burst bigint; maxd bigint; ws bigint; we bigint; cost bigint; steps bigint;
	mode bigint; maxdebt bigint; rec boolean; rep boolean; nd bigint; take bigint; addc bigint; q bigint; left_ bigint; most bigint;
	sa bigint; sb bigint; sc bigint; sd bigint; lg bigint[]; sexp bigint;
	oa bigint; ob bigint; oc bigint; od bigint; olg bigint[];
	existed boolean; newexp bigint;
	allowed boolean; rlim bigint; rem bigint; rreset bigint; rretry bigint; rdelay bigint; rttl bigint; rdebt bigint;
	r bigint; start_ bigint; reset_ bigint; cap bigint; t bigint; tau bigint; tat bigint; backlog bigint;
	nxt bigint; waitok boolean; shaping boolean; cut bigint; used bigint; want bigint; cur bigint; again bigint;
	elapsed bigint; w bigint; room bigint; e bigint; quiet bigint; nsteps bigint; endt bigint;
	at_ bigint; changed boolean; qfrom bigint;
BEGIN
	IF layout <> 0 /*halt:layout*/ THEN
		RAISE EXCEPTION 'halt decision function: the caller sends layout %, this function reads layout %', layout, 0 /*halt:layout*/;
	END IF;
	res := array_fill(0::bigint, ARRAY[n * 0 /*halt:res_stride*/]);
	FOR i IN 1..n LOOP
		k := keys[i];
		o := (i - 1) * 0 /*halt:op_stride*/;
		alg := p[o+1]; req := p[o+2]; per := p[o+3]; burst := p[o+4]; maxd := p[o+5];
		ws := p[o+6]; we := p[o+7]; cost := p[o+8]; steps := p[o+9]; mode := p[o+10]; maxdebt := p[o+11];
		rep := mode % 4 >= 2;
		rec := cost > 0 AND mode % 4 > 0; -- a charge that does not fit is recorded (Limit.records)
		-- algorithms.need: a check asks for nothing, or for one unit with Limit.NeedsUnit.
		IF cost > 0 THEN nd := cost; ELSIF mode >= 4 THEN nd := 1; ELSE nd := 0; END IF;
		LOOP
			SELECT s.a, s.b, s.c, s.d, s.log, s.expires_at INTO sa, sb, sc, sd, lg, sexp
				FROM "halt_state" s WHERE s.key = k FOR UPDATE;
			existed := FOUND;
			IF NOT existed THEN
				sa := 0; sb := 0; sc := 0; sd := 0; lg := NULL;
			END IF;
			oa := sa; ob := sb; oc := sc; od := sd; olg := lg;
			allowed := false; rlim := 0; rem := 0; rreset := 0; rretry := 0; rdelay := 0; rttl := 0; rdebt := 0;
			m := 0; changed := false;
			-- at_ is the time the op is decided at (algorithms.At): its now, or the state's
			-- time (algorithms.StateTime) when that is ahead of it by at most algorithms.MaxSkew.
			at_ := now_us;

			IF alg = 0 /*halt:fixed_window*/ THEN -- fixed_window (C: the state's time)
				IF sc > now_us AND sc - now_us <= 0 /*halt:max_skew*/ THEN at_ := sc; END IF;
				r := at_ % per; IF r < 0 THEN r := r + per; END IF;
				start_ := at_ - r;
				IF sa = start_ THEN
					NULL;
				ELSIF sa > start_ AND sa < start_ + per * 2 THEN
					start_ := sa;
				ELSE
					sa := start_; sb := 0; changed := true;
				END IF;
				reset_ := start_ + per - at_;
				rlim := req; rreset := reset_; rttl := reset_;
				IF cost < 0 THEN
					r := greatest(least(sb, req) + cost, 0);
					IF r <> sb THEN sb := r; changed := true; END IF;
					allowed := true;
				ELSE
					IF sb > maxcount - cost THEN sb := maxcount; ELSE sb := sb + cost; END IF;
					allowed := sb - cost + nd <= req;
					IF allowed AND cost > 0 THEN changed := true; END IF;
					allowed := allowed OR rep;
				END IF;
				IF changed THEN sc := at_; END IF;
				rem := greatest(req - sb, 0);
				IF cost >= 0 THEN
					IF nd > req THEN rretry := -1;
					ELSIF NOT allowed OR rem < nd THEN rretry := reset_; END IF;
				END IF;

			ELSIF alg = 0 /*halt:token_bucket*/ OR alg = 0 /*halt:leaky_bucket*/ THEN -- GCRA (B: the state's time)
				IF burst > 0 THEN cap := burst; ELSE cap := req; END IF;
				rlim := cap;
				IF req <= 0 OR cap <= 0 THEN
					rretry := -1;
					allowed := cost < 0 OR rep;
				ELSE
					IF sb > now_us AND sb - now_us <= 0 /*halt:max_skew*/ THEN at_ := sb; END IF;
					IF per <= 0 THEN t := 0; ELSE t := (per + req - 1) / req; END IF;
					tau := cap * t;
					most := tau + maxdebt * t;
					tat := greatest(sa, at_);
					backlog := least(tat - at_, most);
					shaping := alg = 0 /*halt:leaky_bucket*/ AND maxd > 0 AND NOT rep;
					waitok := NOT shaping OR backlog <= maxd;
					IF cost < 0 THEN
						left_ := 0;
						IF -cost < (backlog + t - 1) / t THEN left_ := backlog + cost * t; END IF;
						IF left_ <> backlog THEN sa := at_ + left_; sb := at_; END IF;
						allowed := true;
						rem := greatest(tau - left_, 0) / t; rreset := left_; rttl := left_;
						IF left_ > tau THEN rdebt := (left_ - tau + t - 1) / t; END IF;
					ELSIF nd <= cap AND backlog + nd * t <= tau AND waitok THEN
						nxt := backlog + cost * t;
						IF cost > 0 THEN sa := at_ + nxt; sb := at_; END IF;
						allowed := true;
						rem := (tau - nxt) / t; rreset := nxt; rttl := nxt;
						IF shaping THEN rdelay := backlog; END IF;
						again := nxt + nd * t;
						IF again > tau THEN rretry := again - tau; END IF;
						IF shaping AND nxt - maxd > rretry THEN rretry := nxt - maxd; END IF;
					ELSE
						IF rec THEN
							take := least(cost, (most - backlog) / t);
							IF take > 0 THEN backlog := backlog + take * t; sa := at_ + backlog; sb := at_; END IF;
						END IF;
						allowed := rep;
						rem := greatest(tau - backlog, 0) / t; rreset := backlog; rttl := backlog;
						IF backlog > tau THEN rdebt := (backlog - tau + t - 1) / t; END IF;
						IF nd > cap THEN
							rretry := -1;
						ELSE
							rretry := backlog + nd * t - tau;
							IF shaping AND backlog - maxd > rretry THEN rretry := backlog - maxd; END IF;
						END IF;
					END IF;
				END IF;

			ELSIF alg = 0 /*halt:sliding_window*/ THEN -- exact log, flattened at,cost pairs; A = the state's time, B = their cost sum
				IF sa > now_us AND sa - now_us <= 0 /*halt:max_skew*/ THEN at_ := sa; END IF;
				IF lg IS NULL THEN lg := '{}'; END IF;
				m := coalesce(array_length(lg, 1), 0) / 2;
				cut := at_ - per;
				used := sb; -- B caches the sum of the log's costs, as in pkg/algorithms
				j := 1;
				WHILE j <= m AND lg[2*j-1] <= cut LOOP used := used - lg[2*j]; j := j + 1; END LOOP;
				IF j > 1 THEN
					IF j > m THEN lg := '{}'; ELSE lg := lg[2*j-1 : 2*m]; END IF;
					m := m - (j - 1);
					changed := true;
				END IF;
				IF m = 0 OR used < 0 THEN
					used := 0;
					FOR j IN 1..m LOOP used := used + lg[2*j]; END LOOP;
				END IF;
				rlim := req;
				addc := 0;
				IF cost < 0 THEN
					q := -cost;
					WHILE q > 0 AND m > 0 LOOP
						take := least(lg[2*m], q);
						lg[2*m] := lg[2*m] - take; used := used - take; q := q - take;
						IF lg[2*m] = 0 THEN
							IF m = 1 THEN lg := '{}'; ELSE lg := lg[1 : 2*m-2]; END IF;
							m := m - 1;
						END IF;
						changed := true;
					END LOOP;
					allowed := true;
				ELSIF used + nd <= req THEN
					allowed := true;
					addc := cost;
				ELSE
					IF rec THEN addc := least(cost, greatest(req + maxdebt - used, 0)); END IF;
					allowed := rep;
				END IF;
				IF addc > 0 THEN
					IF m > 0 AND lg[2*m-1] >= at_ THEN
						lg[2*m] := lg[2*m] + addc;
					ELSE
						lg := lg || ARRAY[at_, addc];
						m := m + 1;
					END IF;
					used := used + addc;
					changed := true;
				END IF;
				IF cost >= 0 THEN
					IF nd > req THEN
						rretry := -1;
					ELSIF used + nd > req THEN
						want := used + nd - req;
						FOR j IN 1..m LOOP
							want := want - lg[2*j];
							IF want <= 0 THEN rretry := lg[2*j-1] + per - at_; EXIT; END IF;
						END LOOP;
					END IF;
				END IF;
				sb := used;
				IF changed THEN sa := at_; END IF;
				rem := greatest(req - used, 0);
				rdebt := greatest(used - req, 0);
				IF m > 0 THEN rreset := lg[2*m-1] + per - at_; rttl := rreset; END IF;

			ELSIF alg = 0 /*halt:sliding_window_counter*/ THEN -- D: the state's time
				IF sd > now_us AND sd - now_us <= 0 /*halt:max_skew*/ THEN at_ := sd; END IF;
				r := at_ % per; IF r < 0 THEN r := r + per; END IF;
				cur := at_ - r;
				IF sa = cur THEN
					NULL;
				ELSIF sa = cur - per THEN
					sc := sb; sb := 0; sa := cur; changed := true;
				ELSIF sa > cur AND sa < cur + 2 * per THEN
					cur := sa;
				ELSE
					sa := cur; sb := 0; sc := 0; changed := true;
				END IF;
				elapsed := greatest(at_ - cur, 0);
				w := floor(sc::float8 * (per - elapsed)::float8 / per::float8)::bigint;
				rlim := req;
				IF cost < 0 THEN
					r := greatest(sb + cost, 0);
					IF r <> sb THEN sb := r; changed := true; END IF;
					allowed := true;
				ELSIF w + sb + nd <= req THEN
					IF cost > 0 THEN
						IF sb > maxcount - cost THEN sb := maxcount; ELSE sb := sb + cost; END IF;
						changed := true;
					END IF;
					allowed := true;
				ELSE
					IF rec THEN
						take := least(cost, greatest(req + maxdebt - w - sb, 0));
						IF take > 0 THEN sb := sb + take; changed := true; END IF;
					END IF;
					allowed := rep;
				END IF;
				IF changed THEN sd := at_; END IF;
				IF cost >= 0 AND nd > req THEN
					rretry := -1;
				ELSIF cost >= 0 AND w + sb + nd > req THEN
					room := req - sb - nd;
					IF room >= 0 AND sc > 0 THEN
						e := per - floor((room + 1)::float8 * per::float8 / sc::float8)::bigint;
						IF e < 0 THEN e := 0; END IF;
						j := 0;
						WHILE j < 8 AND e < per AND floor(sc::float8 * (per - e)::float8 / per::float8)::bigint > room LOOP
							e := e + 1; j := j + 1;
						END LOOP;
						rretry := cur + e - at_;
					ELSE
						room := req - nd;
						IF sb = 0 THEN
							rretry := cur + per - at_;
						ELSE
							e := per - floor((room + 1)::float8 * per::float8 / sb::float8)::bigint;
							IF e < 0 THEN e := 0; END IF;
							j := 0;
							WHILE j < 8 AND e < per AND floor(sb::float8 * (per - e)::float8 / per::float8)::bigint > room LOOP
								e := e + 1; j := j + 1;
							END LOOP;
							rretry := cur + per + e - at_;
						END IF;
					END IF;
				END IF;
				rem := greatest(req - w - sb, 0);
				rdebt := greatest(w + sb - req, 0);
				IF sb > 0 THEN
					rreset := cur + 2 * per - at_;
				ELSIF sc > 0 THEN
					rreset := cur + per - at_;
				END IF;
				rttl := rreset;

			ELSIF alg = 0 /*halt:calendar*/ THEN -- C: the state's time, D: its window's end
				IF sc > now_us AND sc - now_us <= 0 /*halt:max_skew*/ THEN at_ := sc; END IF;
				IF at_ <> now_us AND sa >= we AND sd > sa THEN
					ws := sa; we := sd; -- the state is in a later period: decide in it
				END IF;
				start_ := ws;
				IF sa <> start_ THEN
					IF sa > start_ AND sa < we THEN
						start_ := sa;
					ELSE
						sa := start_; sb := 0; changed := true;
					END IF;
				END IF;
				reset_ := greatest(we - at_, 0);
				rlim := req; rreset := reset_; rttl := reset_;
				IF cost < 0 THEN
					r := greatest(sb + cost, 0);
					IF r <> sb THEN sb := r; changed := true; END IF;
					allowed := true;
				ELSIF sb + nd <= req THEN
					sb := sb + cost; allowed := true;
					IF cost > 0 THEN changed := true; END IF;
				ELSE
					IF rec THEN
						take := least(cost, greatest(req + maxdebt - sb, 0));
						IF take > 0 THEN sb := sb + take; changed := true; END IF;
					END IF;
					allowed := rep;
				END IF;
				IF changed THEN sc := at_; sd := we; END IF;
				rem := greatest(req - sb, 0);
				rdebt := greatest(sb - req, 0);
				IF cost >= 0 THEN
					IF nd > req THEN rretry := -1;
					ELSIF NOT allowed OR rem < nd THEN rretry := reset_; END IF;
				END IF;

			ELSIF alg = 0 /*halt:penalty*/ THEN -- D: the state's time, the last violation or decay
				IF cost < 0 THEN cost := 0; END IF; -- a penalty takes no refunds
				IF sd > now_us AND sd - now_us <= 0 /*halt:max_skew*/ THEN at_ := sd; END IF;
				rlim := req;
				IF at_ >= sa AND sd <> 0 AND per > 0 AND at_ > sd THEN
					qfrom := sd;
					IF sa > sd THEN qfrom := sa; END IF;
					quiet := at_ - qfrom;
					IF quiet >= per THEN
						sc := 0;
						nsteps := quiet / per;
						IF nsteps >= sb THEN sb := 0; ELSE sb := sb - nsteps; END IF;
						sd := qfrom + nsteps * per;
					END IF;
				END IF;
				IF cost > 0 AND at_ >= sa THEN
					IF sc > maxcount - cost THEN sc := maxcount; ELSE sc := sc + cost; END IF;
					sd := at_;
					IF sc >= req THEN
						IF sb < steps THEN sb := sb + 1; END IF;
						sa := at_ + p[o + 0 /*halt:op_ladder*/ + sb];
						sc := 0;
					END IF;
				END IF;
				IF at_ < sa THEN
					rreset := sa - at_; rretry := rreset;
				ELSE
					allowed := true; rem := greatest(req - sc, 0);
				END IF;
				IF sd <> 0 OR sa <> 0 THEN
					endt := greatest(sa, sd);
					rttl := greatest(endt + (sb + 1) * per - at_, 0);
				END IF;

			ELSE
				rretry := -1;
			END IF;
			-- The TTL counts from the op's now, the clock rows expire by (algorithms.skewTTL).
			IF rttl > 0 THEN rttl := rttl + at_ - now_us; END IF;

			IF existed THEN
				-- A row past its expiry on this op's clock is decided on as it is: past its
				-- TTL a state decides as a fresh one for this op, and an op from a replica
				-- whose clock is behind must still read it at its own time. Expiry only
				-- lets the cleaner remove the row.
				IF rttl > 0 THEN
					newexp := greatest(sexp, now_us + rttl);
				ELSE
					newexp := sexp;
				END IF;
				IF newexp <> sexp OR sa <> oa OR sb <> ob OR sc <> oc OR sd <> od OR lg IS DISTINCT FROM olg THEN
					UPDATE "halt_state" SET a = sa, b = sb, c = sc, d = sd, log = lg, expires_at = newexp WHERE key = k;
				END IF;
				EXIT;
			END IF;
			IF rttl <= 0 OR (sa = 0 AND sb = 0 AND sc = 0 AND sd = 0 AND m = 0) THEN
				EXIT; -- nothing worth keeping
			END IF;
			INSERT INTO "halt_state" (key, a, b, c, d, log, expires_at)
				VALUES (k, sa, sb, sc, sd, lg, now_us + rttl) ON CONFLICT (key) DO NOTHING;
			EXIT WHEN FOUND;
			-- Another transaction created the row meanwhile: decide again under its lock.
		END LOOP;
		o := (i - 1) * 0 /*halt:res_stride*/;
		res[o+1] := i - 1;
		res[o+2] := CASE WHEN allowed THEN 1 ELSE 0 END;
		res[o+3] := rlim; res[o+4] := rem; res[o+5] := rreset; res[o+6] := rretry; res[o+7] := rdelay; res[o+8] := rttl;
		res[o+9] := rdebt;
	END LOOP;
	RETURN res;
END
$halt$;
