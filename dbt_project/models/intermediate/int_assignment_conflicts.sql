{#- Users who saw more than one variant of the same experiment inside its window. -#}
with

exposures as (

    select * from {{ ref('int_exposures_in_window') }}

),

{#- min and max, not count(distinct variant): a distinct count per user costs twice as much over every
    exposure, and only the few users in conflict need it -#}
in_conflict as (

    select experiment_id, user_id
    from exposures
    group by experiment_id, user_id
    having min(variant) <> max(variant)

),

conflicts as (

    select
        exposures.experiment_id,
        exposures.user_id,
        count(distinct exposures.variant) as n_variants,
        min(exposures.assigned_at) as first_exposed_at,
        max(exposures.assigned_at) as last_exposed_at
    from exposures
    inner join in_conflict
        on in_conflict.experiment_id = exposures.experiment_id
       and in_conflict.user_id = exposures.user_id
    group by exposures.experiment_id, exposures.user_id

)

select * from conflicts
