{#- Per experiment x metric x user: events of the metric's name from the user's
    first exposure (inclusive) to the window end (exclusive); for a ratio metric also
    the events of its denominator, in the same window. -#}
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

{#- each event name a metric reads, and whether it is the metric's numerator (or only event) -#}
metric_events as (

    select metric_id, event_name, 1 as is_numerator
    from metrics

    union all

    select metric_id, denominator_event as event_name, 0 as is_numerator
    from metrics
    where metric_type = 'ratio'

),

conversions as (

    select
        first_exposures.experiment_id,
        metric_events.metric_id,
        first_exposures.user_id,
        sum(metric_events.is_numerator) as cv_count,
        sum(1 - metric_events.is_numerator) as denominator_count
    from first_exposures
    inner join events
        on events.user_id = first_exposures.user_id
       and events.event_at >= first_exposures.first_exposed_at
       and events.event_at < first_exposures.window_end
    inner join metric_events
        on metric_events.event_name = events.event_name
    group by first_exposures.experiment_id, metric_events.metric_id, first_exposures.user_id

)

select * from conversions
