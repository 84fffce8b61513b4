{#- The steps from the raw logs to a user's counts, one macro each. A full build runs them over every
    row (stg_events, int_first_exposures, int_user_events_near_exposure); int_user_metric_counts'
    incremental night runs the same macros over the rows of the users that new raw rows touch. Each
    takes the name of a relation or CTE and returns a select. A change to what they count must bump
    the version in experiment_count_fingerprints (the model's own code is in the fingerprint), so
    that warehouses recount with it. -#}

{#- Raw events with every key present, typed; a row missing a key cannot be counted (dq_data_issues
    counts them). -#}
{% macro complete_events(events) -%}
    select {{ typed_raw_columns(source('raw', 'events'), 'events') }}
    from {{ events }}
    where event_id is not null
      and user_id is not null
      and event_name is not null
      and event_at is not null
{%- endmacro %}

{#- Delivery retries repeat an event_id: its earliest occurrence once. A subset of the events gives
    the same winners as the whole log as long as it holds every row of each event_id it holds. -#}
{% macro deduplicated_events(events) -%}
    select event_id, user_id, event_name, event_at
    from (
        select
            *,
            row_number() over (partition by event_id order by event_at, user_id, event_name) as occurrence
        from {{ events }}
    ) ranked
    where occurrence = 1
{%- endmacro %}

{#- One row per experiment x user: the variant and time of their first exposure in the window. The
    input holds every exposure of each experiment x user it holds. -#}
{% macro first_exposure_rows(exposures) -%}
    select
        experiment_id,
        user_id,
        variant,
        assigned_at as first_exposed_at,
        window_end
    from (
        select
            *,
            row_number() over (
                partition by experiment_id, user_id
                order by assigned_at, variant
            ) as exposure_number
        from {{ exposures }}
    ) ranked
    where exposure_number = 1
{%- endmacro %}

{#- Each exposed user's events per experiment x user x event name x period: is_pre_period 1 for the
    var('pre_period_days') days before the first exposure (the exposure's own time excluded), 0 from
    the first exposure (inclusive) to the window end (exclusive: the conversions). -#}
{% macro events_near_exposure(first_exposures, events) -%}
    select
        {{ first_exposures }}.experiment_id,
        {{ first_exposures }}.user_id,
        {{ events }}.event_name,
        case when {{ events }}.event_at < {{ first_exposures }}.first_exposed_at then 1 else 0 end as is_pre_period,
        count(*) as n_events
    from {{ first_exposures }}
    inner join {{ events }}
        on {{ events }}.user_id = {{ first_exposures }}.user_id
       and {{ events }}.event_at >= {{ dbt.dateadd('day', -1 * var('pre_period_days'), first_exposures ~ '.first_exposed_at') }}
       and {{ events }}.event_at < {{ first_exposures }}.window_end
    group by
        {{ first_exposures }}.experiment_id,
        {{ first_exposures }}.user_id,
        {{ events }}.event_name,
        case when {{ events }}.event_at < {{ first_exposures }}.first_exposed_at then 1 else 0 end
{%- endmacro %}

{#- Per experiment: its counting window's end and a fingerprint of everything else a user's counts
    depend on (the window's start, every metric's definition, the pre-period's length, this
    project's counting code). int_user_metric_counts recounts an experiment whose fingerprint
    changed or whose window ended earlier than it had counted to. -#}
{% macro experiment_count_fingerprints() -%}
    {%- set code = local_md5(model.raw_code ~ '|complete_events,deduplicated_events,first_exposure_rows,events_near_exposure v1') -%}
    select
        windows.experiment_id,
        windows.window_end,
        md5(
            cast(windows.start_at as {{ dbt.type_string() }})
            || '|' || metric_definitions.definitions
            || '|{{ var("pre_period_days") }}|{{ code }}'
        ) as fingerprint
    from {{ ref('int_experiment_windows') }} as windows
    cross join (
        select
            {{ ordered_listagg(
                "metric_id || ':' || event_name || ':' || metric_type || ':' || coalesce(denominator_event, '')",
                "';'", "metric_id") }} as definitions
        from {{ ref('stg_metrics') }}
    ) as metric_definitions
{%- endmacro %}

{#- int_user_metric_counts' look-back start: the last night's as-of (the latest window end it counted
    to) minus var('late_data_lookback_days'). A raw row stamped since then is looked at. -#}
{% macro lookback_start() -%}
    select {{ dbt.dateadd('day', -1 * var('late_data_lookback_days'), 'max(counted_until)') }} from {{ this }}
{%- endmacro %}

{#- The experiments int_user_metric_counts holds that must be recounted from scratch: gone from
    raw.experiments, their fingerprint changed, their window now ends before what was counted (an
    earlier as-of), or it grew from a time before the look-back start (an ended experiment extended:
    no one looked at the rows in between). A select of experiment_id. -#}
{% macro experiments_to_recount() -%}
    select counted.experiment_id
    from (
        select experiment_id, max(counted_until) as counted_until, min(fingerprint) as fingerprint,
               max(fingerprint) as last_fingerprint
        from {{ this }}
        group by experiment_id
    ) as counted
    left join ({{ experiment_count_fingerprints() }}) as current_experiments
        on current_experiments.experiment_id = counted.experiment_id
    where current_experiments.experiment_id is null
       or current_experiments.fingerprint <> counted.fingerprint
       or current_experiments.fingerprint <> counted.last_fingerprint
       or current_experiments.window_end < counted.counted_until
       or (current_experiments.window_end > counted.counted_until
           and counted.counted_until < ({{ lookback_start() }}))
{%- endmacro %}

{#- int_user_metric_counts' pre-hook, inside the transaction of its incremental night: the rows of the
    experiments to recount from scratch go; the model then finds none of theirs and counts every user
    of those experiments again. -#}
{% macro delete_experiments_to_recount() -%}
    {%- if is_incremental() -%}
    delete from {{ this }}
    where experiment_id in ({{ experiments_to_recount() }})
    {%- endif -%}
{%- endmacro %}

{#- Whether an incremental night of int_user_metric_counts keeps any experiment's rows. When none (a
    metric added, new counting code, every experiment's window moved), the night counts everyone the
    way a full build does, through the views: looking up each user's recent rows would cost more. Asked
    while the model compiles, before its pre-hook deletes anything. -#}
{% macro keeps_any_counted_experiment() -%}
    {%- if not (execute and is_incremental()) -%}
        {{ return(false) }}
    {%- endif -%}
    {%- set kept = run_query("select count(*) from (select distinct experiment_id from " ~ this
                             ~ ") as counted where experiment_id not in (" ~ experiments_to_recount() ~ ")") -%}
    {{ return(kept.columns[0].values()[0] > 0) }}
{%- endmacro %}
