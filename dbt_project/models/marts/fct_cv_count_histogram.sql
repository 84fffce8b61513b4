{#- Sufficient statistics of the collapsed fit: users per experiment x metric x
    variant x cv_count x exposure x denominator cell. exposure_days_cell is the exposure
    rounded up to whole days (at least 1). A ratio metric's users with no denominator
    events are left out: a rate per denominator event says nothing about them. -#}
with

user_counts as (

    select * from {{ ref('fct_user_cv_counts') }}

),

cells as (

    select
        experiment_id,
        metric_id,
        variant,
        cv_count,
        case
            when exposure_days <= 1 then 1
            else cast(ceil(exposure_days) as {{ dbt.type_int() }})
        end as exposure_days_cell,
        denominator_count
    from user_counts
    where denominator_count is null or denominator_count > 0

),

final as (

    select
        experiment_id,
        metric_id,
        variant,
        cv_count,
        exposure_days_cell,
        denominator_count,
        count(*) as n_users
    from cells
    group by experiment_id, metric_id, variant, cv_count, exposure_days_cell, denominator_count

)

select * from final
