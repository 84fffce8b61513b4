{#- Each exposed user's events around their first exposure, per experiment x user x event name x
    period: is_pre_period 1 for the var('pre_period_days') days before the first exposure (the
    pre-period covariate; the exposure's own time excluded), 0 from the first exposure (inclusive)
    to the window end (exclusive: the conversions). One join of the event log with the first
    exposures serves both: it is the nightly build's largest step. -#}
with

first_exposures as (

    select * from {{ ref('int_first_exposures') }}

),

events as (

    select * from {{ ref('stg_events') }}

),

near_exposure as (

    select
        first_exposures.experiment_id,
        first_exposures.user_id,
        events.event_name,
        case when events.event_at < first_exposures.first_exposed_at then 1 else 0 end as is_pre_period
    from first_exposures
    inner join events
        on events.user_id = first_exposures.user_id
       and events.event_at >= {{ dbt.dateadd('day', -1 * var('pre_period_days'), 'first_exposures.first_exposed_at') }}
       and events.event_at < first_exposures.window_end

),

counted as (

    select
        experiment_id,
        user_id,
        event_name,
        is_pre_period,
        count(*) as n_events
    from near_exposure
    group by experiment_id, user_id, event_name, is_pre_period

)

select * from counted
