{#- One row per experiment x metric x user: the analysis population.
    Every metric is analysed for every experiment; users with no events count 0;
    users seen in more than one variant are excluded (see dq_assignment_conflicts).
    A conversion metric's count is 1 when the user had at least one event; a ratio
    metric also carries the user's denominator events. pre_cv_count: the metric's
    events in the pre-period before first exposure, NULL for a user with no history
    (no event of any name there). -#}
with

first_exposures as (

    select * from {{ ref('int_first_exposures') }}

),

{#- the data-quality mart's table, not the view it copies: the conflict rule runs once per build -#}
conflicts as (

    select * from {{ ref('dq_assignment_conflicts') }}

),

metrics as (

    select * from {{ ref('stg_metrics') }}

),

{#- read twice below, computed once: the join of the event log with the first exposures -#}
near_exposure as {{ materialized_cte() }} (

    select * from {{ ref('int_user_events_near_exposure') }}

),

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

clean_exposures as (

    select first_exposures.*
    from first_exposures
    left join conflicts
        on conflicts.experiment_id = first_exposures.experiment_id
       and conflicts.user_id = first_exposures.user_id
    where conflicts.user_id is null

),

user_metrics as (

    select
        clean_exposures.experiment_id,
        metrics.metric_id,
        metrics.metric_type,
        clean_exposures.user_id,
        clean_exposures.variant,
        clean_exposures.first_exposed_at,
        clean_exposures.window_end
    from clean_exposures
    cross join metrics

),

final as (

    select
        user_metrics.experiment_id,
        user_metrics.metric_id,
        user_metrics.user_id,
        user_metrics.variant,
        cast(
            case
                when user_metrics.metric_type = 'conversion' and user_metric_events.cv_count > 0 then 1
                else coalesce(user_metric_events.cv_count, 0)
            end as {{ dbt.type_bigint() }}
        ) as cv_count,
        cast(
            {{ dbt.datediff('user_metrics.first_exposed_at', 'user_metrics.window_end', 'second') }} / 86400.0
            as {{ type_double() }}
        ) as exposure_days,
        user_metrics.first_exposed_at,
        cast(
            case when user_metrics.metric_type = 'ratio' then coalesce(user_metric_events.denominator_count, 0) end
            as {{ dbt.type_bigint() }}
        ) as denominator_count,
        cast(
            case when users_with_history.user_id is not null then coalesce(user_metric_events.pre_cv_count, 0) end
            as {{ dbt.type_bigint() }}
        ) as pre_cv_count
    from user_metrics
    left join user_metric_events
        on user_metric_events.experiment_id = user_metrics.experiment_id
       and user_metric_events.metric_id = user_metrics.metric_id
       and user_metric_events.user_id = user_metrics.user_id
    left join users_with_history
        on users_with_history.experiment_id = user_metrics.experiment_id
       and users_with_history.user_id = user_metrics.user_id

)

select * from final
