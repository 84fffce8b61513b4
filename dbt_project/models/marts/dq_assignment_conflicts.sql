{#- Data quality: users excluded from analysis because they saw more than one variant. -#}
with

conflicts as (

    select * from {{ ref('int_assignment_conflicts') }}

),

final as (

    select
        experiment_id,
        user_id,
        n_variants,
        first_exposed_at,
        last_exposed_at
    from conflicts

)

select * from final
