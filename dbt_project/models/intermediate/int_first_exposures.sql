{#- One row per experiment x user: the variant and time of their first exposure in the window. -#}
with

exposures as (

    select * from {{ ref('int_exposures_in_window') }}

),

ranked as (

    select
        *,
        row_number() over (
            partition by experiment_id, user_id
            order by assigned_at, variant
        ) as exposure_number
    from exposures

),

first_exposures as (

    select
        experiment_id,
        user_id,
        variant,
        assigned_at as first_exposed_at,
        window_end
    from ranked
    where exposure_number = 1

)

select * from first_exposures
