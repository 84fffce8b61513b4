{#- Per experiment x metric x user with history: the metric's events in the pre-period,
    the var('pre_period_days') days before the user's first exposure (the first exposure
    itself excluded). A user has history when they had any event at all in that window;
    users without are absent here (fct_user_cv_counts gives them a NULL pre_cv_count).
    A ratio metric counts its numerator's events. pre_period_days 0 turns the covariate off. -#}
with

first_exposures as (

    select * from {{ ref('int_first_exposures') }}

),

metrics as (

    select * from {{ ref('stg_metrics') }}

),

events as (

    select * from {{ ref('stg_events') }}

),

pre_period_events as (

    select
        first_exposures.experiment_id,
        first_exposures.user_id,
        events.event_name
    from first_exposures
    inner join events
        on events.user_id = first_exposures.user_id
       and events.event_at >= {{ dbt.dateadd('day', -1 * var('pre_period_days'), 'first_exposures.first_exposed_at') }}
       and events.event_at < first_exposures.first_exposed_at
    where {{ var('pre_period_days') }} > 0

),

users_with_history as (

    select distinct experiment_id, user_id
    from pre_period_events

),

metric_counts as (

    select
        pre_period_events.experiment_id,
        metrics.metric_id,
        pre_period_events.user_id,
        count(*) as pre_cv_count
    from pre_period_events
    inner join metrics
        on metrics.event_name = pre_period_events.event_name
    group by pre_period_events.experiment_id, metrics.metric_id, pre_period_events.user_id

),

final as (

    select
        users_with_history.experiment_id,
        metrics.metric_id,
        users_with_history.user_id,
        coalesce(metric_counts.pre_cv_count, 0) as pre_cv_count
    from users_with_history
    cross join metrics
    left join metric_counts
        on metric_counts.experiment_id = users_with_history.experiment_id
       and metric_counts.metric_id = metrics.metric_id
       and metric_counts.user_id = users_with_history.user_id

)

select * from final
