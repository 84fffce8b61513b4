{#- One row per experiment x metric x user exposed in the window: the user's variant and first exposure,
    the metric's events from the first exposure up to counted_until (the window's end when the row was
    counted), a ratio metric's denominator events, and the pre-period count (pre_cv_count: NULL for a
    user with no event of any name there). Users in several variants are here too: fct_user_cv_counts
    leaves them out, with the exposure up to the window's end of this run.

    Incremental on DuckDB (a table elsewhere). A night recounts only the users that raw rows stamped
    since the look-back start could change: the last night's as-of (the latest counted_until) minus
    var('late_data_lookback_days'). Those are the users with such an exposure of the experiment, or
    such an event before its window's end (an event_id's earliest occurrence is looked for among every row
    of that id). An experiment whose definition changed, that is gone, whose window now ends before
    what was counted, or whose window grew from before the look-back start (an ended experiment
    extended) is recounted whole (the pre-hook deletes it first).
    Every other row is what a full rebuild gives, as long as no row lands later than the look-back:
    `glmm-ab run --full-refresh` rebuilds the table. -#}
{{ config(
    materialized=('incremental' if target.type == 'duckdb' else 'table'),
    incremental_strategy='delete+insert',
    unique_key=['experiment_id', 'metric_id', 'user_id'],
    on_schema_change='fail',
    pre_hook="{{ delete_experiments_to_recount() }}"
) }}
-- read on an incremental night only (a block dbt's parser skips):
-- depends_on: {{ ref('int_exposures_in_window') }}
with

metrics as (

    select * from {{ ref('stg_metrics') }}

),

fingerprints as (

    {{ experiment_count_fingerprints() }}

),

{% if keeps_any_counted_experiment() %}

{#- the experiments the table counts (the pre-hook removed those to recount whole) -#}
counted as (

    select distinct experiment_id
    from {{ this }}

),

{#- from when a raw row is looked at -#}
lookback as (

    select ({{ lookback_start() }}) as since

),

exposures as (

    select * from {{ ref('int_exposures_in_window') }}

),

raw_events as (

    {{ complete_events(source('raw', 'events')) }}

),

{#- each user's earliest event stamped since the look-back start -#}
users_with_recent_events as (

    select user_id, min(event_at) as first_recent_event_at
    from raw_events
    where event_at >= (select since from lookback)
    group by user_id

),

{#- the experiment x user pairs to recount: every user of an experiment the table does not count, and the
    users with an exposure of the experiment, or an event before its window's end (the pre-period's
    too), stamped since the look-back start -#}
recount as (

    select experiment_id, user_id
    from exposures
    where experiment_id not in (select experiment_id from counted)

    union

    select experiment_id, user_id
    from exposures
    where assigned_at >= (select since from lookback)

    union

    select exposures.experiment_id, exposures.user_id
    from exposures
    inner join users_with_recent_events
        on users_with_recent_events.user_id = exposures.user_id
       and users_with_recent_events.first_recent_event_at < exposures.window_end

),

recount_exposures as (

    select exposures.*
    from exposures
    inner join recount
        on recount.experiment_id = exposures.experiment_id
       and recount.user_id = exposures.user_id

),

first_exposures as (

    {{ first_exposure_rows('recount_exposures') }}

),

{#- every row of each event_id a recounted user's events carry: its earliest occurrence may be another
    user's -#}
candidate_events as (

    select *
    from raw_events
    where event_id in (
        select raw_events.event_id
        from raw_events
        inner join (select distinct user_id from recount) as recount_users
            on recount_users.user_id = raw_events.user_id
    )

),

events as (

    {{ deduplicated_events('candidate_events') }}

),

near_exposure as {{ materialized_cte() }} (

    {{ events_near_exposure('first_exposures', 'events') }}

),

{% else %}

first_exposures as (

    select * from {{ ref('int_first_exposures') }}

),

{#- read twice below, computed once: the join of the event log with the first exposures -#}
near_exposure as {{ materialized_cte() }} (

    select * from {{ ref('int_user_events_near_exposure') }}

),

{% endif %}

{#- each event name a metric reads, and whether it is the metric's numerator (or only event) -#}
metric_events as (

    select metric_id, event_name, 1 as is_numerator
    from metrics

    union all

    select metric_id, denominator_event as event_name, 0 as is_numerator
    from metrics
    where metric_type = 'ratio'

),

{#- per experiment x metric x user: the metric's events (a ratio metric's numerator's) in the window and
    in the pre-period, and a ratio metric's denominator's in the window -#}
user_metric_events as (

    select
        near_exposure.experiment_id,
        metric_events.metric_id,
        near_exposure.user_id,
        sum(case when near_exposure.is_pre_period = 0 then near_exposure.n_events * metric_events.is_numerator else 0 end)
            as cv_count,
        sum(case when near_exposure.is_pre_period = 0 then near_exposure.n_events * (1 - metric_events.is_numerator) else 0 end)
            as denominator_count,
        sum(case when near_exposure.is_pre_period = 1 then near_exposure.n_events * metric_events.is_numerator else 0 end)
            as pre_cv_count
    from near_exposure
    inner join metric_events
        on metric_events.event_name = near_exposure.event_name
    group by near_exposure.experiment_id, metric_events.metric_id, near_exposure.user_id

),

{#- a user has history when they had any event at all in the pre-period -#}
users_with_history as (

    select distinct experiment_id, user_id
    from near_exposure
    where is_pre_period = 1

),

user_metrics as (

    select
        first_exposures.experiment_id,
        metrics.metric_id,
        metrics.metric_type,
        first_exposures.user_id,
        first_exposures.variant,
        first_exposures.first_exposed_at,
        first_exposures.window_end
    from first_exposures
    cross join metrics

),

final as (

    select
        user_metrics.experiment_id,
        user_metrics.metric_id,
        user_metrics.user_id,
        user_metrics.variant,
        user_metrics.first_exposed_at,
        cast(
            case
                when user_metrics.metric_type = 'conversion' and user_metric_events.cv_count > 0 then 1
                else coalesce(user_metric_events.cv_count, 0)
            end as {{ dbt.type_bigint() }}
        ) as cv_count,
        cast(
            case when user_metrics.metric_type = 'ratio' then coalesce(user_metric_events.denominator_count, 0) end
            as {{ dbt.type_bigint() }}
        ) as denominator_count,
        cast(
            case when users_with_history.user_id is not null then coalesce(user_metric_events.pre_cv_count, 0) end
            as {{ dbt.type_bigint() }}
        ) as pre_cv_count,
        user_metrics.window_end as counted_until,
        fingerprints.fingerprint
    from user_metrics
    inner join fingerprints
        on fingerprints.experiment_id = user_metrics.experiment_id
    left join user_metric_events
        on user_metric_events.experiment_id = user_metrics.experiment_id
       and user_metric_events.metric_id = user_metrics.metric_id
       and user_metric_events.user_id = user_metrics.user_id
    left join users_with_history
        on users_with_history.experiment_id = user_metrics.experiment_id
       and users_with_history.user_id = user_metrics.user_id

)

select * from final
