{#- Users who saw more than one variant of the same experiment inside its window. -#}
with

exposures as (

    select * from {{ ref('int_exposures_in_window') }}

),

{#- min and max, not count(distinct variant): a distinct count per user costs twice as much over every
    exposure, and only the few users in conflict need it -#}
per_user as (

    select
        experiment_id,
        user_id,
        min(variant) as min_variant,
        max(variant) as max_variant,
        min(assigned_at) as first_exposed_at,
        max(assigned_at) as last_exposed_at
    from exposures
    group by experiment_id, user_id

),

in_conflict as (

    select * from per_user where min_variant <> max_variant

),

variants_seen as (

    select
        exposures.experiment_id,
        exposures.user_id,
        count(distinct exposures.variant) as n_variants
    from exposures
    inner join in_conflict
        on in_conflict.experiment_id = exposures.experiment_id
       and in_conflict.user_id = exposures.user_id
    group by exposures.experiment_id, exposures.user_id

),

conflicts as (

    select
        in_conflict.experiment_id,
        in_conflict.user_id,
        variants_seen.n_variants,
        in_conflict.first_exposed_at,
        in_conflict.last_exposed_at
    from in_conflict
    inner join variants_seen
        on variants_seen.experiment_id = in_conflict.experiment_id
       and variants_seen.user_id = in_conflict.user_id

)

select * from conflicts
