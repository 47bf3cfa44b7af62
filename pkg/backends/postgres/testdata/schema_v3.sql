-- schema.sql: the PostgreSQL schema of halt-envoy's state (pkg/backends/postgres),
-- schema version 3 (postgres.SchemaVersion).
--
-- Read by migrate (Open, `halt-envoy migrate`), which runs the statements below in order
-- in one transaction, each starting at its "-- statement:" line. The names are those of
-- the default table: migrate replaces "halt_state", "halt_state_apply" and
-- "halt_state_expires_idx" with the names of the configured table=, and each number
-- marked "-- halt:NAME" with the Go constant of that name (backends.Inject), so the
-- algorithm numbers and bounds have one source: pkg/algorithms. Changing the function's
-- text means bumping SchemaVersion, so that existing deployments migrate.

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
-- burst, max_delay, window start, window end, cost, steps, then the ladder; the result
-- holds res_stride values per op: op index, allowed (0/1), limit, remaining, reset_after,
-- retry_after, delay, ttl. The caller sorts ops by key, so every transaction takes its
-- row locks in the same order and concurrent batches cannot deadlock; ops on one key
-- keep their order.
CREATE OR REPLACE FUNCTION "halt_state_apply"(keys text[], p bigint[], now_us bigint) RETURNS bigint[]
LANGUAGE plpgsql AS $halt$
DECLARE
	-- Wire numbers shared with Go, injected when the store loads this file.
	a_fixed_window CONSTANT bigint := 0; -- halt:fixed_window
	a_token_bucket CONSTANT bigint := 0; -- halt:token_bucket
	a_sliding_window CONSTANT bigint := 0; -- halt:sliding_window
	a_sliding_window_counter CONSTANT bigint := 0; -- halt:sliding_window_counter
	a_leaky_bucket CONSTANT bigint := 0; -- halt:leaky_bucket
	a_calendar CONSTANT bigint := 0; -- halt:calendar
	a_penalty CONSTANT bigint := 0; -- halt:penalty
	maxcount CONSTANT bigint := 0; -- halt:max_count
	op_ladder CONSTANT int := 0; -- halt:op_ladder
	op_stride CONSTANT int := 0; -- halt:op_stride
	res_stride CONSTANT int := 0; -- halt:res_stride
	n int := coalesce(array_length(keys, 1), 0);
	res bigint[];
	i int; o int; j int; m int;
	k text;
	alg bigint; req bigint; per bigint; burst bigint; maxd bigint; ws bigint; we bigint; cost bigint; steps bigint;
	sa bigint; sb bigint; sc bigint; sd bigint; lg bigint[]; sexp bigint;
	oa bigint; ob bigint; oc bigint; od bigint; olg bigint[];
	existed boolean; stale boolean; newexp bigint;
	allowed boolean; rlim bigint; rem bigint; rreset bigint; rretry bigint; rdelay bigint; rttl bigint;
	r bigint; start_ bigint; reset_ bigint; cap bigint; t bigint; tau bigint; tat bigint; backlog bigint;
	nxt bigint; waitok boolean; shape boolean; cut bigint; used bigint; need bigint; cur bigint; again bigint;
	elapsed bigint; w bigint; room bigint; e bigint; quiet bigint; nsteps bigint; endt bigint;
BEGIN
	res := array_fill(0::bigint, ARRAY[n * res_stride]);
	FOR i IN 1..n LOOP
		k := keys[i];
		o := (i - 1) * op_stride;
		alg := p[o+1]; req := p[o+2]; per := p[o+3]; burst := p[o+4]; maxd := p[o+5];
		ws := p[o+6]; we := p[o+7]; cost := p[o+8]; steps := p[o+9];
		LOOP
			SELECT s.a, s.b, s.c, s.d, s.log, s.expires_at INTO sa, sb, sc, sd, lg, sexp
				FROM "halt_state" s WHERE s.key = k FOR UPDATE;
			existed := FOUND;
			stale := existed AND sexp <= now_us;
			IF NOT existed OR stale THEN
				sa := 0; sb := 0; sc := 0; sd := 0; lg := NULL;
			END IF;
			oa := sa; ob := sb; oc := sc; od := sd; olg := lg;
			allowed := false; rlim := 0; rem := 0; rreset := 0; rretry := 0; rdelay := 0; rttl := 0;
			m := 0;

			IF alg = a_fixed_window THEN -- fixed_window
				r := now_us % per; IF r < 0 THEN r := r + per; END IF;
				start_ := now_us - r;
				IF sa = start_ THEN
					NULL;
				ELSIF sa > start_ AND sa < start_ + per * 2 THEN
					start_ := sa;
				ELSE
					sa := start_; sb := 0;
				END IF;
				IF sb > maxcount - cost THEN sb := maxcount; ELSE sb := sb + cost; END IF;
				reset_ := start_ + per - now_us;
				rlim := req; rreset := reset_; rttl := reset_;
				IF sb <= req THEN
					allowed := true; rem := req - sb;
					IF rem < cost THEN rretry := reset_; END IF;
				ELSIF cost > req THEN
					rretry := -1;
				ELSE
					rretry := reset_;
				END IF;

			ELSIF alg = a_token_bucket OR alg = a_leaky_bucket THEN -- token_bucket, leaky_bucket (GCRA)
				shape := alg = a_leaky_bucket;
				IF burst > 0 THEN cap := burst; ELSE cap := req; END IF;
				rlim := cap;
				IF req <= 0 OR cap <= 0 THEN
					rretry := -1;
					allowed := cost = 0;
				ELSE
					IF per <= 0 THEN t := 0; ELSE t := (per + req - 1) / req; END IF;
					tau := cap * t;
					tat := greatest(sa, now_us);
					backlog := least(tat - now_us, tau);
					IF cost > cap THEN
						rretry := -1;
						rem := (tau - backlog) / t; rreset := backlog; rttl := backlog;
					ELSE
						nxt := backlog + cost * t;
						waitok := NOT shape OR maxd <= 0 OR backlog <= maxd;
						IF nxt <= tau AND waitok THEN
							IF cost > 0 THEN sa := now_us + nxt; END IF;
							allowed := true;
							rem := (tau - nxt) / t; rreset := nxt; rttl := nxt;
							IF shape AND maxd > 0 THEN rdelay := backlog; END IF;
							again := nxt + cost * t;
							IF again > tau THEN rretry := again - tau; END IF;
							IF shape AND maxd > 0 AND nxt - maxd > rretry THEN rretry := nxt - maxd; END IF;
						ELSE
							rem := (tau - backlog) / t; rreset := backlog; rttl := backlog;
							rretry := nxt - tau;
							IF NOT waitok AND backlog - maxd > rretry THEN rretry := backlog - maxd; END IF;
						END IF;
					END IF;
				END IF;

			ELSIF alg = a_sliding_window THEN -- sliding_window (exact log, flattened at,cost pairs; B = their cost sum)
				IF lg IS NULL THEN lg := '{}'; END IF;
				m := coalesce(array_length(lg, 1), 0) / 2;
				cut := now_us - per;
				used := sb; -- B caches the sum of the log's costs, as in pkg/algorithms
				j := 1;
				WHILE j <= m AND lg[2*j-1] <= cut LOOP used := used - lg[2*j]; j := j + 1; END LOOP;
				IF j > 1 THEN
					IF j > m THEN lg := '{}'; ELSE lg := lg[2*j-1 : 2*m]; END IF;
					m := m - (j - 1);
				END IF;
				IF m = 0 OR used < 0 THEN
					used := 0;
					FOR j IN 1..m LOOP used := used + lg[2*j]; END LOOP;
				END IF;
				rlim := req;
				IF used + cost <= req THEN
					allowed := true;
					IF cost > 0 THEN
						IF m > 0 AND lg[2*m-1] >= now_us THEN
							lg[2*m] := lg[2*m] + cost;
						ELSE
							lg := lg || ARRAY[now_us, cost];
							m := m + 1;
						END IF;
						used := used + cost;
					END IF;
				ELSIF cost > req THEN
					rretry := -1;
				END IF;
				IF rretry = 0 AND used + cost > req THEN
					need := used + cost - req;
					FOR j IN 1..m LOOP
						need := need - lg[2*j];
						IF need <= 0 THEN rretry := lg[2*j-1] + per - now_us; EXIT; END IF;
					END LOOP;
				END IF;
				sb := used;
				rem := greatest(req - used, 0);
				IF m > 0 THEN rreset := lg[2*m-1] + per - now_us; rttl := rreset; END IF;

			ELSIF alg = a_sliding_window_counter THEN -- sliding_window_counter
				r := now_us % per; IF r < 0 THEN r := r + per; END IF;
				cur := now_us - r;
				IF sa = cur THEN
					NULL;
				ELSIF sa = cur - per THEN
					sc := sb; sb := 0; sa := cur;
				ELSIF sa > cur AND sa < cur + 2 * per THEN
					cur := sa;
				ELSE
					sa := cur; sb := 0; sc := 0;
				END IF;
				elapsed := greatest(now_us - cur, 0);
				w := floor(sc::float8 * (per - elapsed)::float8 / per::float8)::bigint;
				rlim := req;
				IF w + sb + cost <= req THEN
					IF sb > maxcount - cost THEN sb := maxcount; ELSE sb := sb + cost; END IF;
					allowed := true;
				ELSIF cost > req THEN
					rretry := -1;
				END IF;
				IF rretry = 0 AND w + sb + cost > req THEN
					room := req - sb - cost;
					IF room >= 0 AND sc > 0 THEN
						e := per - floor((room + 1)::float8 * per::float8 / sc::float8)::bigint;
						IF e < 0 THEN e := 0; END IF;
						j := 0;
						WHILE j < 8 AND e < per AND floor(sc::float8 * (per - e)::float8 / per::float8)::bigint > room LOOP
							e := e + 1; j := j + 1;
						END LOOP;
						rretry := cur + e - now_us;
					ELSE
						room := req - cost;
						IF sb = 0 THEN
							rretry := cur + per - now_us;
						ELSE
							e := per - floor((room + 1)::float8 * per::float8 / sb::float8)::bigint;
							IF e < 0 THEN e := 0; END IF;
							j := 0;
							WHILE j < 8 AND e < per AND floor(sb::float8 * (per - e)::float8 / per::float8)::bigint > room LOOP
								e := e + 1; j := j + 1;
							END LOOP;
							rretry := cur + per + e - now_us;
						END IF;
					END IF;
				END IF;
				rem := greatest(req - w - sb, 0);
				IF sb > 0 THEN
					rreset := cur + 2 * per - now_us;
				ELSIF sc > 0 THEN
					rreset := cur + per - now_us;
				END IF;
				rttl := rreset;

			ELSIF alg = a_calendar THEN -- calendar
				start_ := ws;
				IF sa <> start_ THEN
					IF sa > start_ AND sa < we THEN
						start_ := sa;
					ELSE
						sa := start_; sb := 0;
					END IF;
				END IF;
				reset_ := greatest(we - now_us, 0);
				rlim := req; rreset := reset_; rttl := reset_;
				IF sb + cost <= req THEN
					sb := sb + cost; allowed := true;
				ELSIF cost > req THEN
					rretry := -1;
				ELSE
					rretry := reset_;
				END IF;
				rem := greatest(req - sb, 0);
				IF allowed AND rem < cost THEN rretry := reset_; END IF;

			ELSIF alg = a_penalty THEN -- penalty
				rlim := req;
				IF now_us >= sa AND sd <> 0 AND per > 0 AND now_us > sd THEN
					quiet := now_us - sd;
					IF sa > sd THEN quiet := now_us - sa; END IF;
					IF quiet >= per THEN
						sc := 0;
						nsteps := quiet / per;
						IF nsteps >= sb THEN sb := 0; ELSE sb := sb - nsteps; END IF;
					END IF;
				END IF;
				IF cost > 0 AND now_us >= sa THEN
					IF sc > maxcount - cost THEN sc := maxcount; ELSE sc := sc + cost; END IF;
					sd := now_us;
					IF sc >= req THEN
						IF sb < steps THEN sb := sb + 1; END IF;
						sa := now_us + p[o + op_ladder + sb];
						sc := 0;
					END IF;
				END IF;
				IF now_us < sa THEN
					rreset := sa - now_us; rretry := rreset;
				ELSE
					allowed := true; rem := greatest(req - sc, 0);
				END IF;
				IF sd <> 0 OR sa <> 0 THEN
					endt := greatest(sa, sd);
					rttl := greatest(endt + (sb + 1) * per - now_us, 0);
				END IF;

			ELSE
				rretry := -1;
			END IF;

			IF existed THEN
				IF stale THEN
					IF rttl > 0 THEN newexp := now_us + rttl; ELSE newexp := sexp; END IF;
				ELSIF rttl > 0 THEN
					newexp := greatest(sexp, now_us + rttl);
				ELSE
					newexp := sexp;
				END IF;
				IF stale OR newexp <> sexp OR sa <> oa OR sb <> ob OR sc <> oc OR sd <> od OR lg IS DISTINCT FROM olg THEN
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
		o := (i - 1) * res_stride;
		res[o+1] := i - 1;
		res[o+2] := CASE WHEN allowed THEN 1 ELSE 0 END;
		res[o+3] := rlim; res[o+4] := rem; res[o+5] := rreset; res[o+6] := rretry; res[o+7] := rdelay; res[o+8] := rttl;
	END LOOP;
	RETURN res;
END
$halt$;
