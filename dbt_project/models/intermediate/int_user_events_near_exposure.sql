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

counted as (

    {{ events_near_exposure('first_exposures', 'events') }}

)

select * from counted
