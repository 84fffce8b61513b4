{#- Users who saw more than one variant of the same experiment inside its window. -#}
with

exposures as (

    select * from {{ ref('int_exposures_in_window') }}

),

per_user as (

    select
        experiment_id,
        user_id,
        count(distinct variant) as n_variants,
        min(assigned_at) as first_exposed_at,
        max(assigned_at) as last_exposed_at
    from exposures
    group by experiment_id, user_id

),

conflicts as (

    select * from per_user where n_variants > 1

)

select * from conflicts
