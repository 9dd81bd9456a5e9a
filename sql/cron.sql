-- durably cron: the schedule math, in SQL (type durably.cron_spec: migration 0002).
--
-- durably.cron_next(expr, after, tz) is the first instant strictly after
-- `after` at which the cron expression fires, read in the IANA zone `tz`.
--
-- FUNCTIONS
--   cron_next(expr text, after timestamptz, tz text = 'UTC') -> timestamptz
--   cron_next_n(expr text, after timestamptz, tz text, n int) -> setof timestamptz
--   cron_validate(expr text, tz text = 'UTC') -> true, or raises DU002
--   cron_parse(expr text) -> the expanded field sets (int arrays), for display
--   cron_compile(expr text) -> durably.cron_spec (bit masks), and
--   cron_next_compiled(spec, after, tz): for callers that store the compiled
--     form. cron_next is plain SQL and inlined, so a constant expression is
--     compiled once per query; a column of expressions once per row (a few
--     microseconds).
--   Internal: cron_field, cron_ctz, cron_next_wall, cron_transition, cron_local.
--
-- SYNTAX (what cron-parser v5 accepts, with the exceptions listed below)
--   5 fields  min hour dom month dow        (seconds are 0)
--   6 fields  sec min hour dom month dow
--   each field is a comma list of items: *  ?  a  a-b  */n  a/n  a-b/n
--   (a/n means a-max/n; ? is the same as *). Months JAN..DEC and weekdays
--   SUN..SAT may be written as names, in any case. Day of week is 0-7, both
--   0 and 7 meaning Sunday. Also: L in day of month (last day of the month),
--   nL in day of week (the last weekday n of the month, e.g. 5L = last
--   Friday), and w#n as the whole day-of-week field (the n-th weekday w of
--   the month, n = 1..5, e.g. MON#1). Macros: @yearly @annually @monthly
--   @weekly @daily @midnight @hourly @minutely @secondly @weekdays @weekends.
--   Differences from cron-parser: H (hashed jitter) and W (nearest weekday)
--   are rejected; fewer than 5 fields and the empty string are rejected
--   (cron-parser fills in defaults); repeated values (1,1 or 0,7) are accepted
--   (cron-parser rejects them); @midnight is accepted (cron-parser has no such
--   macro); an expression that can never fire (0 0 30 2 *) is rejected at
--   parse time (cron-parser fails later, on next()); L may be lower case.
--   Returns null when nothing fires within 400 years, or after is infinite.
--
-- DAY OF MONTH / DAY OF WEEK (as cron-parser, and classic cron)
--   A field is "restricted" unless it is written exactly * or ?. When both are
--   restricted a day matches if EITHER matches (0 0 13 * FRI: every 13th and
--   every Friday); when one is * only the other counts. Note that */1 or 1-31
--   is restricted, as in cron-parser.
--
-- ALGORITHM
--   durably.cron_compile parses the text once into a durably.cron_spec: one
--   bit mask per field (bit v set when value v is allowed) plus the L/#
--   details. durably.cron_next_wall then finds the first wall-clock time at or
--   after a start that matches, field by field: if the month is not allowed,
--   jump to the next allowed month (or the first one of next year) and reset
--   the smaller fields; then the next allowed day of that month (running out
--   of days moves to the next month); then hour, minute and second the same
--   way, each "next allowed value >= current" being one shift and one
--   count-trailing-zeros on the mask. A handful of iterations per call, never
--   a minute-by-minute scan. durably.cron_next wraps this with the time zone.
--
-- TIME ZONES AND DST
--   Schedules are read in local wall-clock time of tz. The firing instants
--   are a fixed set (so cron_next(e, t) always returns the first member of the
--   set after t, whatever t is), defined wall time by wall time:
--   * a wall time that exists once fires at that instant;
--   * a wall time skipped by a spring-forward (02:30 on the day New York jumps
--     from 02:00 to 03:00) fires at the instant it would have had without the
--     jump: read with the offset in force before the transition, i.e. shifted
--     forward by the length of the gap (02:30 -> 03:30 EDT; 0 2 * * * -> 03:00
--     EDT). This is what cron-parser does, and what PostgreSQL's own
--     `timestamp at time zone` does. It keeps every-hour/every-minute
--     expressions regular: 30 * * * * fires at 01:30 EST, 03:30 EDT, ... once
--     per real hour, with nothing extra in between (had the gap collapsed to
--     03:00 instead, 30 * * * * would fire at 03:00 and again at 03:30).
--     Shifted times that land on a time that fires anyway fire once.
--   * a wall time repeated by a fall-back fires once, at its first occurrence
--     (30 1 * * * on New York's fall-back day: 01:30 EDT only) -- unless the
--     hour field allows all 24 hours (*, 0-23, */1 ...): then it fires at both
--     occurrences, so 0 * * * * fires at 01:00 EDT and again at 01:00 EST, on
--     every real hour, and */15 * * * * every real quarter hour. This is the
--     rule cron-parser applies too (its "24 hour values" test).
--
--   Known differences from cron-parser v5, all within a few hours of a DST
--   transition (test/cron.test.ts checks that no other kind occurs, and that
--   our side follows the rules above):
--   * `after` inside the second occurrence of a repeated wall time, hour
--     field not every hour: cron-parser returns the second occurrence (30 1 *
--     * * in New York from 01:10 EST -> 01:30 EST); here that wall time
--     already fired at its first occurrence, so the answer is the next day.
--   * `after` just past a spring-forward, while skipped wall times are still
--     firing shifted (0,30 2 * * * in New York from 03:10 EDT): here 02:30
--     fires at 03:30 EDT as it would have from before the transition;
--     cron-parser only shifts when it steps across the gap, so it forgets it.
--   * transitions that are not a whole hour on the hour (Lord Howe's 30
--     minutes, Chatham's 02:45): cron-parser's hour-by-hour stepping skips
--     some shifted times (15 2 * * * on Lord Howe's spring-forward day fires
--     the next day; here at 02:45 LHDT) and some second occurrences of
--     every-hour expressions.
--   * cron-parser sometimes returns an instant before currentDate around Lord
--     Howe's fall-back (its bug).
--   Assumed of the zone data (true of every zone in use): transitions at
--   least 25 hours apart, offsets whole seconds and never 36 hours apart.
--   A firing more than 72 hours ahead is searched again from 36 hours before
--   it, so that one transition at most lies between start and firing.
--
-- ERRORS: invalid expressions and unknown time zones raise SQLSTATE DU002
-- with a message naming the problem. Time zones are whatever PostgreSQL
-- knows, except POSIX-style offsets such as UTC+5, rejected because their
-- sign is the reverse of what people mean (use Etc/GMT-5 or a city).

-- Count trailing zeros of a positive mask: the position of its lowest set bit.
-- (p & -p) isolates that bit; a power of two is exact in float8, so the
-- rounded logarithm is exact. Plain SQL so that it is inlined.
create or replace function durably.cron_ctz(p_mask bigint) returns integer
language sql immutable parallel safe
as $$ select round(ln((p_mask & -p_mask)::float8) / 0.6931471805599453)::integer $$;

-- One field's text -> bit mask of allowed values. For day of month bit 0
-- means L; for day of week bits 8-14 are the nL weekdays (7 folded into 0).
-- Plain string functions rather than capturing regular expressions: these
-- run for every evaluation of a non-constant expression, and PostgreSQL's
-- regex engine is slow at reporting captures.
create or replace function durably.cron_field(p_text text, p_field text, p_min integer, p_max integer, p_expr text)
returns bigint
language plpgsql immutable strict parallel safe
as $$
declare
  v_text text := p_text;
  v_item text;
  v_base text;
  v_step text;
  v_at   integer;
  v_lo   integer;
  v_hi   integer;
  v_span integer;
  v_bits bigint;
  v_mask bigint := 0;
  v_bad  text;
begin
  if v_text ~ '[A-Za-z]' then
    -- Names become numbers wherever they occur, as in cron-parser (so MON-FRI
    -- and JAN/3 work). Names and L are case-insensitive.
    v_text := upper(v_text);
    if p_field = 'month' then
      v_text := replace(replace(replace(replace(replace(replace(replace(replace(replace(replace(replace(replace(
                v_text, 'JAN', '1'), 'FEB', '2'), 'MAR', '3'), 'APR', '4'), 'MAY', '5'), 'JUN', '6'),
                'JUL', '7'), 'AUG', '8'), 'SEP', '9'), 'OCT', '10'), 'NOV', '11'), 'DEC', '12');
    elsif p_field = 'day of week' then
      v_text := replace(replace(replace(replace(replace(replace(replace(
                v_text, 'SUN', '0'), 'MON', '1'), 'TUE', '2'), 'WED', '3'), 'THU', '4'), 'FRI', '5'), 'SAT', '6');
    end if;
  end if;

  foreach v_item in array string_to_array(v_text, ',') loop
    if v_item = 'L' and p_field = 'day of month' then
      v_mask := v_mask | 1;
      continue;
    elsif p_field = 'day of week' and v_item ~ '^[0-7]L$' then
      v_mask := v_mask | (1::bigint << (8 + left(v_item, 1)::integer % 7));
      continue;
    end if;
    -- * | ? | a | a-b, then an optional /step (a/n means a-max/n)
    if v_item !~ '^(?:[*?]|\d+(?:-\d+)?)(?:/\d+)?$' then
      v_bad := substring(v_item from '[A-Z]+');
      raise exception using errcode = 'DU002', message = format(
        'invalid cron expression "%s": %s', p_expr,
        case
          when v_item = '' then format('empty list item in %s "%s"', p_field, p_text)
          when v_bad ~ 'H' then format('H (hashed values) is not supported, in %s "%s"', p_field, p_text)
          when v_bad ~ 'W' then format('W (nearest weekday) is not supported, in %s "%s"', p_field, p_text)
          when v_bad = 'L' then format('L is not allowed there, in %s "%s"', p_field, p_text)
          when v_bad is not null then format('unknown name "%s" in %s "%s"', v_bad, p_field, p_text)
          else format('invalid %s "%s"', p_field, v_item)
        end);
    end if;
    v_at := strpos(v_item, '/');
    if v_at > 0 then
      v_base := left(v_item, v_at - 1);
      v_step := substr(v_item, v_at + 1);
    else
      v_base := v_item;
      v_step := null;
    end if;
    if v_base = '*' or v_base = '?' then
      v_lo := p_min;
      v_hi := p_max;
    else
      v_at := strpos(v_base, '-');
      -- least(): absurdly long numbers become a range error, not an overflow
      if v_at > 0 then
        v_lo := least(left(v_base, v_at - 1)::numeric, 1000000);
        v_hi := least(substr(v_base, v_at + 1)::numeric, 1000000);
      else
        v_lo := least(v_base::numeric, 1000000);
        v_hi := case when v_step is null then v_lo else p_max end;
      end if;
    end if;
    if v_lo < p_min or v_lo > p_max or v_hi > p_max then
      raise exception using errcode = 'DU002', message = format(
        'invalid cron expression "%s": %s %s out of range %s-%s', p_expr, p_field,
        case when v_lo < p_min or v_lo > p_max then v_lo else v_hi end, p_min, p_max);
    end if;
    if v_lo > v_hi then
      raise exception using errcode = 'DU002', message = format(
        'invalid cron expression "%s": %s range %s-%s goes backwards', p_expr, p_field, v_lo, v_hi);
    end if;
    if v_step is null or v_step::numeric = 1 then
      -- bits v_lo..v_hi in one go (v_hi <= 59, so no overflow)
      v_mask := v_mask | (((1::bigint << (v_hi + 1)) - 1) & ~((1::bigint << v_lo) - 1));
    elsif v_step::numeric = 0 then
      raise exception using errcode = 'DU002', message = format(
        'invalid cron expression "%s": %s step must be at least 1 in "%s"', p_expr, p_field, v_item);
    else
      -- every v_span-th bit from v_lo, doubling the pattern: a few shifts
      -- instead of one iteration per value
      v_span := least(v_step::numeric, 1000);
      v_bits := 1::bigint << v_lo;
      while v_lo + v_span <= v_hi loop
        v_bits := v_bits | (v_bits << v_span);
        v_span := v_span * 2;
      end loop;
      v_mask := v_mask | (v_bits & ((1::bigint << (v_hi + 1)) - 1));
    end if;
  end loop;

  if p_field = 'day of week' then
    -- 7 is Sunday too
    v_mask := (v_mask & ~128::bigint) | ((v_mask >> 7) & 1);
  end if;
  return v_mask;
end
$$;

-- Parses and validates an expression (or macro) into a durably.cron_spec.
create or replace function durably.cron_compile(p_expr text) returns durably.cron_spec
language plpgsql immutable strict parallel safe
as $$
declare
  v_expr   text := btrim(p_expr, E' \t\n\r\f\v');
  v_fields text[];
  v_f      text;
  v_parts  text[];
  v_sec    bigint;
  v_min    bigint;
  v_hour   bigint;
  v_dom    bigint;
  v_mon    bigint;
  v_dow    bigint;
  v_nth    integer := 0;
  v_dom_r  boolean;
  v_dow_r  boolean;
  v_first  integer;
begin
  if left(v_expr, 1) = '@' then
    v_expr := case lower(v_expr)
      when '@yearly'   then '0 0 0 1 1 *'
      when '@annually' then '0 0 0 1 1 *'
      when '@monthly'  then '0 0 0 1 * *'
      when '@weekly'   then '0 0 0 * * 0'
      when '@daily'    then '0 0 0 * * *'
      when '@midnight' then '0 0 0 * * *'
      when '@hourly'   then '0 0 * * * *'
      when '@minutely' then '0 * * * * *'
      when '@secondly' then '* * * * * *'
      when '@weekdays' then '0 0 0 * * 1-5'
      when '@weekends' then '0 0 0 * * 0,6'
    end;
    if v_expr is null then
      raise exception using errcode = 'DU002', message = format(
        'invalid cron expression "%s": unknown macro', p_expr);
    end if;
  end if;
  if length(v_expr) > 1024 then
    raise exception using errcode = 'DU002', message = format(
      'invalid cron expression "%s...": longer than 1024 characters', left(p_expr, 40));
  end if;

  -- Fields are separated by any whitespace; single spaces are the cheap case.
  v_fields := string_to_array(v_expr, ' ');
  if array_position(v_fields, '') is not null or v_expr ~ '[\t\n\r\f\v]' then
    v_fields := regexp_split_to_array(v_expr, '\s+');
  end if;
  if cardinality(v_fields) = 5 then
    v_fields := '0'::text || v_fields;
  elsif cardinality(v_fields) <> 6 or v_expr = '' then
    raise exception using errcode = 'DU002', message = format(
      'invalid cron expression "%s": expected 5 or 6 fields, got %s', p_expr,
      case when v_expr = '' then 0 else cardinality(v_fields) end);
  end if;

  -- Fast paths for the commonest spellings, * and a plain number; all else
  -- goes through durably.cron_field.
  v_f := v_fields[1];
  v_sec := case when v_f = '*' then 1152921504606846975  -- bits 0-59
                when v_f ~ '^\d\d?$' and v_f::integer <= 59 then 1::bigint << v_f::integer
                else durably.cron_field(v_f, 'second', 0, 59, p_expr) end;
  v_f := v_fields[2];
  v_min := case when v_f = '*' then 1152921504606846975
                when v_f ~ '^\d\d?$' and v_f::integer <= 59 then 1::bigint << v_f::integer
                else durably.cron_field(v_f, 'minute', 0, 59, p_expr) end;
  v_f := v_fields[3];
  v_hour := case when v_f = '*' then 16777215            -- bits 0-23
                 when v_f ~ '^\d\d?$' and v_f::integer <= 23 then 1::bigint << v_f::integer
                 else durably.cron_field(v_f, 'hour', 0, 23, p_expr) end;
  v_f := v_fields[4];
  v_dom_r := v_f <> '*' and v_f <> '?';
  v_dom := case when not v_dom_r then 4294967294         -- bits 1-31
                when v_f ~ '^\d\d?$' and v_f::integer between 1 and 31 then 1::bigint << v_f::integer
                else durably.cron_field(v_f, 'day of month', 1, 31, p_expr) end;
  v_f := v_fields[5];
  v_mon := case when v_f = '*' or v_f = '?' then 8190    -- bits 1-12
                when v_f ~ '^\d\d?$' and v_f::integer between 1 and 12 then 1::bigint << v_f::integer
                else durably.cron_field(v_f, 'month', 1, 12, p_expr) end;
  v_f := v_fields[6];
  v_dow_r := v_f <> '*' and v_f <> '?';
  -- w#n: the whole day-of-week field, one weekday (cron-parser allows no
  -- list, range, step or L with it).
  if strpos(v_f, '#') > 0 then
    v_parts := regexp_match(v_f, '^([^#,/L-]+)#([1-5])$');
    if v_parts is null then
      raise exception using errcode = 'DU002', message = format(
        'invalid cron expression "%s": day of week "%s": # needs one weekday and an occurrence 1-5, as in MON#2',
        p_expr, v_f);
    end if;
    v_f := v_parts[1];
    v_nth := v_parts[2]::integer;
  end if;
  v_dow := case when v_f = '*' or v_f = '?' then 127
                when v_f ~ '^[0-6]$' then 1::bigint << v_f::integer
                else durably.cron_field(v_f, 'day of week', 0, 7, p_expr) end;

  -- Reject what can never fire: only day of month counts, and none of its
  -- days exists in any allowed month (February counted with 29 days).
  if v_dom_r and not v_dow_r and v_dom & 1 = 0 then
    v_first := durably.cron_ctz(v_dom);
    if (v_first = 31 and v_mon & 5546 = 0)           -- Jan Mar May Jul Aug Oct Dec
       or (v_first = 30 and v_mon & ~4::bigint = 0) then  -- only February
      raise exception using errcode = 'DU002', message = format(
        'invalid cron expression "%s": never fires, no allowed day of month exists in the allowed months', p_expr);
    end if;
  end if;

  return row(v_sec, v_min, v_hour::integer, v_dom & ~1::bigint, v_mon::integer,
             (v_dow & 127)::integer, ((v_dow >> 8) & 127)::integer, v_nth,
             v_dom & 1 = 1, v_dom_r, v_dow_r)::durably.cron_spec;
end
$$;

-- The first wall-clock time >= p_from (whole seconds) that matches, or null
-- when there is none within 400 years. Pure calendar arithmetic, no zone.
create or replace function durably.cron_next_wall(p_spec durably.cron_spec, p_from timestamp)
returns timestamp
language plpgsql immutable strict parallel safe
as $$
declare
  v_y    integer := date_part('year', p_from);
  v_mo   integer := date_part('month', p_from);
  v_d    integer := date_part('day', p_from);
  v_h    integer := date_part('hour', p_from);
  v_mi   integer := date_part('minute', p_from);
  v_s    integer := floor(date_part('second', p_from));
  v_stop integer := least(v_y + 400, 294275);
  v_m    bigint;
  v_dim  integer;   -- days in the current month
  v_nd   integer;   -- next matching day of the current month, or null
  v_dow  integer;
  v_dom_ok boolean;
  v_dow_ok boolean;
begin
  loop
    -- Month: jump to the next allowed one, this year or the next.
    if (p_spec.months >> v_mo) & 1 = 0 then
      v_m := p_spec.months >> v_mo;
      if v_m = 0 then
        v_y := v_y + 1;
        if v_y > v_stop then return null; end if;
        v_mo := durably.cron_ctz(p_spec.months);
      else
        v_mo := v_mo + durably.cron_ctz(v_m);
      end if;
      v_d := 1; v_h := 0; v_mi := 0; v_s := 0;
    end if;

    -- Day: the first day >= v_d of this month that matches.
    v_dim := case v_mo when 2 then case when v_y % 4 = 0 and (v_y % 100 <> 0 or v_y % 400 = 0) then 29 else 28 end
                       when 4 then 30 when 6 then 30 when 9 then 30 when 11 then 30 else 31 end;
    v_nd := null;
    if v_d > v_dim then
      null;
    elsif not p_spec.dow_restricted and not p_spec.last_day then
      -- only day of month counts (all of them when it is * too)
      v_m := p_spec.days >> v_d;
      if v_m <> 0 then v_nd := v_d + durably.cron_ctz(v_m); end if;
    elsif not p_spec.dom_restricted and p_spec.nth_weekday = 0 and p_spec.last_weekdays = 0 then
      -- only day of week counts: rotate the weekday mask to start at today's
      v_dow := date_part('dow', make_date(v_y, v_mo, v_d));
      v_m := ((p_spec.weekdays | (p_spec.weekdays << 7)) >> v_dow) & 127;
      v_nd := v_d + durably.cron_ctz(v_m);
    else
      -- both restricted (either may match), or L / # involved: walk the days
      v_dow := date_part('dow', make_date(v_y, v_mo, v_d));
      for v_day in v_d .. v_dim loop
        v_dom_ok := (p_spec.days >> v_day) & 1 = 1 or (p_spec.last_day and v_day = v_dim);
        v_dow_ok := ((p_spec.weekdays >> v_dow) & 1 = 1
                     and (p_spec.nth_weekday = 0 or (v_day + 6) / 7 = p_spec.nth_weekday))
                    or ((p_spec.last_weekdays >> v_dow) & 1 = 1 and v_day > v_dim - 7);
        if (case when p_spec.dom_restricted and p_spec.dow_restricted then v_dom_ok or v_dow_ok
                 when p_spec.dow_restricted then v_dow_ok
                 else v_dom_ok end) then
          v_nd := v_day;
          exit;
        end if;
        v_dow := (v_dow + 1) % 7;
      end loop;
    end if;
    if v_nd is null or v_nd > v_dim then
      v_mo := v_mo + 1;
      if v_mo > 12 then
        v_mo := 1;
        v_y := v_y + 1;
        if v_y > v_stop then return null; end if;
      end if;
      v_d := 1; v_h := 0; v_mi := 0; v_s := 0;
      continue;
    end if;
    if v_nd <> v_d then
      v_d := v_nd; v_h := 0; v_mi := 0; v_s := 0;
    end if;

    -- Hour, minute, second: next allowed value, or carry into the next unit
    -- (v_h = 24 or v_mi = 60 simply finds no bits and carries again).
    v_m := p_spec.hours >> v_h;
    if v_m = 0 then
      v_d := v_d + 1; v_h := 0; v_mi := 0; v_s := 0;
      continue;
    end if;
    if v_m & 1 = 0 then
      v_h := v_h + durably.cron_ctz(v_m); v_mi := 0; v_s := 0;
    end if;

    v_m := p_spec.minutes >> v_mi;
    if v_m = 0 then
      v_h := v_h + 1; v_mi := 0; v_s := 0;
      continue;
    end if;
    if v_m & 1 = 0 then
      v_mi := v_mi + durably.cron_ctz(v_m); v_s := 0;
    end if;

    v_m := p_spec.seconds >> v_s;
    if v_m = 0 then
      v_mi := v_mi + 1; v_s := 0;
      continue;
    end if;
    if v_m & 1 = 0 then
      v_s := v_s + durably.cron_ctz(v_m);
    end if;
    return make_timestamp(v_y, v_mo, v_d, v_h, v_mi, v_s);
  end loop;
end
$$;

-- The first instant in (p_lo, p_hi] whose UTC offset in p_tz differs from
-- p_lo's (the caller knows p_hi's differs): binary search to the second.
-- Only used near DST transitions.
create or replace function durably.cron_transition(p_lo timestamptz, p_hi timestamptz, p_tz text)
returns timestamptz
language plpgsql stable strict parallel safe
as $$
declare
  v_lo  bigint := floor(extract(epoch from p_lo));
  v_hi  bigint := ceil(extract(epoch from p_hi));
  v_off interval := (p_lo at time zone p_tz) - (p_lo at time zone 'UTC');
  v_mid bigint;
  v_t   timestamptz;
begin
  while v_hi - v_lo > 1 loop
    v_mid := (v_lo + v_hi) / 2;
    v_t := to_timestamp(v_mid);
    if (v_t at time zone p_tz) - (v_t at time zone 'UTC') = v_off then
      v_lo := v_mid;
    else
      v_hi := v_mid;
    end if;
  end loop;
  return to_timestamp(v_hi);
end
$$;

-- Wall time of p_at in p_tz, raising DU002 for an unknown zone.
create or replace function durably.cron_local(p_at timestamptz, p_tz text) returns timestamp
language plpgsql stable strict parallel restricted
as $$
begin
  -- POSIX offsets: PostgreSQL reads UTC+5 as five hours WEST of Greenwich.
  if p_tz ~* '^(utc|gmt|ut|z)?\s*[+-]?\d' then
    raise exception using errcode = 'DU002', message = format(
      'unknown timezone "%s" (offsets like UTC+5 are read the POSIX way, west positive; use a name such as Etc/GMT-5 or Asia/Karachi)', p_tz);
  end if;
  return p_at at time zone p_tz;
exception when invalid_parameter_value then
  raise exception using errcode = 'DU002', message = format('unknown timezone "%s"', p_tz);
end
$$;

-- cron_next for an already compiled expression. See the header for the DST
-- rules; "offset" below is the zone's UTC offset (wall time - UTC).
create or replace function durably.cron_next_compiled(p_spec durably.cron_spec, p_after timestamptz, p_tz text)
returns timestamptz
language plpgsql stable strict parallel restricted
as $$
declare
  -- every hour fires (0 * * * *): a repeated wall time fires at both instants
  v_all_hours boolean := p_spec.hours = 16777215;
  v_start    timestamptz;  -- first candidate instant (firings are whole seconds)
  v_wall     timestamp;    -- where the wall-clock search starts
  v_off      interval;     -- offset at v_start
  v_off_back interval;     -- offset 25 hours before v_start
  v_off_t    interval;     -- offset after a transition
  v_gap      timestamptz;  -- a skipped wall time still to fire (see below)
  v_w        timestamp;
  v_w2       timestamp;
  v_c        timestamptz;
  v_first    timestamptz;
  v_t        timestamptz;
begin
  if not isfinite(p_after) then
    return null;
  end if;
  v_start := date_trunc('second', p_after, 'UTC') + interval '1 second';
  v_wall := durably.cron_local(v_start, p_tz);
  v_off := v_wall - (v_start at time zone 'UTC');
  v_t := v_start - interval '25 hours';
  v_off_back := (v_t at time zone p_tz) - (v_t at time zone 'UTC');

  if v_off_back < v_off then
    -- A spring-forward in the last 25 hours. Skipped wall times fire in
    -- [transition, transition + gap), so right after a transition some may
    -- still be ahead although their wall times are behind v_wall (0,30 2 * * *
    -- from 03:00:01 EDT: 02:30 fires at 03:30). They are the skipped wall
    -- times from v_start read with the old offset up to the end of the gap.
    v_t := v_start - (v_off - v_off_back);
    if (v_t at time zone p_tz) - (v_t at time zone 'UTC') = v_off_back then
      v_w := durably.cron_next_wall(p_spec, v_wall - (v_off - v_off_back));
      if v_w < v_wall then
        v_t := durably.cron_transition(v_t, v_start, p_tz);
        if v_w < (v_t at time zone p_tz) then
          v_gap := (v_w - v_off_back) at time zone 'UTC';
        end if;
      end if;
    end if;
  end if;

  for v_restart in 1 .. 8 loop
    v_w := durably.cron_next_wall(p_spec, v_wall);
    if v_w is null then
      return v_gap;
    end if;
    -- The instant of v_w if the offset has not changed since v_start.
    v_c := (v_w - v_off) at time zone 'UTC';

    if v_c - v_start > interval '72 hours' then
      -- Far ahead (a weekly or yearly schedule): nothing fires before v_c -
      -- 36 hours (offsets never move that much), so start again from there.
      -- This keeps at most one transition between the start and the firing,
      -- which the rest relies on: across both transitions of a year the
      -- offset is back where it was, and a repeated wall time (Chatham,
      -- first Sunday of April 03:17) would look like a plain one.
      return least(durably.cron_next_compiled(p_spec, v_c - interval '36 hours', p_tz), v_gap);
    end if;

    if (v_c at time zone p_tz) = v_w then
      -- The common case: v_w is a real wall time in the current offset.
      -- Unless every hour fires, it may be the second occurrence of a time
      -- repeated by a fall-back that happened just before v_start (the first
      -- occurrence then was before v_start), and repeats do not fire.
      if not v_all_hours and v_off_back > v_off then
        v_first := (v_w - v_off_back) at time zone 'UTC';
        if (v_first at time zone p_tz) = v_w then
          if v_first >= v_start then
            return v_first;  -- cannot happen with transitions > 25h apart
          end if;
          -- skip to the end of the repeated range: transition + old offset
          v_t := durably.cron_transition(v_first, v_start, p_tz);
          v_wall := greatest((v_t at time zone p_tz) + (v_off_back - v_off), v_w + interval '1 second');
          continue;
        end if;
      end if;
      return least(v_c, v_gap);
    end if;

    -- The offset changes between v_start and v_c, at v_t; v_w >= v_t + v_off.
    v_t := durably.cron_transition(v_start, v_c, p_tz);
    v_off_t := (v_t at time zone p_tz) - (v_t at time zone 'UTC');
    if v_off_t > v_off then
      -- Spring forward: wall times [v_t + v_off, v_t + v_off_t) do not exist.
      if v_w >= (v_t at time zone p_tz) then
        return (v_w - v_off_t) at time zone 'UTC';  -- past the gap
      end if;
      -- v_w is in the gap and fires at v_c (read with the old offset). A wall
      -- time just after the gap may still come first when the gap is not a
      -- whole hour (Lord Howe 02:00 -> 02:30: 02:15 fires at 02:45, 02:30 at
      -- 02:30).
      v_w2 := durably.cron_next_wall(p_spec, v_t at time zone p_tz);
      if v_w2 is not null and (v_w2 - v_off_t) at time zone 'UTC' < v_c then
        return (v_w2 - v_off_t) at time zone 'UTC';
      end if;
      return v_c;
    end if;
    -- Fall back: wall times [v_t + v_off_t, v_t + v_off) happen again after
    -- v_t; v_w is past them. When every hour fires, their second occurrences
    -- fire too and come first.
    if v_all_hours then
      v_w2 := durably.cron_next_wall(p_spec, v_t at time zone p_tz);
      if v_w2 < (v_t at time zone p_tz) + (v_off - v_off_t) then
        return (v_w2 - v_off_t) at time zone 'UTC';
      end if;
    end if;
    return (v_w - v_off_t) at time zone 'UTC';
  end loop;
  return v_gap;
end
$$;

-- The first instant strictly after p_after at which p_expr fires in p_tz.
-- Plain SQL so that it is inlined: with a constant expression the planner
-- compiles it once per query, not once per row.
create or replace function durably.cron_next(p_expr text, p_after timestamptz, p_tz text default 'UTC')
returns timestamptz
language sql stable parallel restricted
as $$ select durably.cron_next_compiled(durably.cron_compile(p_expr), p_after, p_tz) $$;

-- The next p_n firings after p_after (previews).
create or replace function durably.cron_next_n(p_expr text, p_after timestamptz, p_tz text, p_n integer)
returns setof timestamptz
language plpgsql stable strict parallel restricted
as $$
declare
  v_spec durably.cron_spec := durably.cron_compile(p_expr);
  v_at   timestamptz := p_after;
begin
  perform durably.cron_local(now(), p_tz);  -- validate the zone even when p_n = 0
  for v_i in 1 .. p_n loop
    v_at := durably.cron_next_compiled(v_spec, v_at, p_tz);
    exit when v_at is null;
    return next v_at;
  end loop;
end
$$;

-- The expanded field sets of an expression, for display and validation.
-- Raises DU002 when it is invalid.
create or replace function durably.cron_parse(
  p_expr text,
  out seconds integer[], out minutes integer[], out hours integer[],
  out days_of_month integer[], out months integer[], out days_of_week integer[],
  out last_day_of_month boolean, out last_weekdays integer[], out nth_weekday integer,
  out dom_restricted boolean, out dow_restricted boolean)
language plpgsql immutable strict parallel safe
as $$
declare
  v_spec durably.cron_spec := durably.cron_compile(p_expr);
begin
  seconds       := array(select v from generate_series(0, 59) v where (v_spec.seconds >> v) & 1 = 1);
  minutes       := array(select v from generate_series(0, 59) v where (v_spec.minutes >> v) & 1 = 1);
  hours         := array(select v from generate_series(0, 23) v where (v_spec.hours >> v) & 1 = 1);
  days_of_month := array(select v from generate_series(1, 31) v where (v_spec.days >> v) & 1 = 1);
  months        := array(select v from generate_series(1, 12) v where (v_spec.months >> v) & 1 = 1);
  days_of_week  := array(select v from generate_series(0, 6) v where (v_spec.weekdays >> v) & 1 = 1);
  last_weekdays := array(select v from generate_series(0, 6) v where (v_spec.last_weekdays >> v) & 1 = 1);
  last_day_of_month := v_spec.last_day;
  nth_weekday       := nullif(v_spec.nth_weekday, 0);
  dom_restricted    := v_spec.dom_restricted;
  dow_restricted    := v_spec.dow_restricted;
end
$$;

-- True for a valid expression and zone; raises DU002 naming the problem
-- otherwise (usable in a check constraint).
create or replace function durably.cron_validate(p_expr text, p_tz text default 'UTC')
returns boolean
language plpgsql stable strict parallel restricted
as $$
begin
  perform durably.cron_compile(p_expr);
  perform durably.cron_local(now(), p_tz);
  return true;
end
$$;
