{#- Per experiment x metric x user: events of the metric's name from the user's
    first exposure (inclusive) to the window end (exclusive). -#}
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

conversions as (

    select
        first_exposures.experiment_id,
        metrics.metric_id,
        first_exposures.user_id,
        count(*) as cv_count
    from first_exposures
    inner join events
        on events.user_id = first_exposures.user_id
       and events.event_at >= first_exposures.first_exposed_at
       and events.event_at < first_exposures.window_end
    inner join metrics
        on metrics.event_name = events.event_name
    group by first_exposures.experiment_id, metrics.metric_id, first_exposures.user_id

)

select * from conversions
