{#- Sufficient statistics of the collapsed fit: users per experiment x metric x
    variant x cv_count x exposure x denominator x pre-period count cell (the engine bins
    the pre-period counts; the nightly job adjusts count metrics only, so a conversion or
    ratio metric's are NULL here). exposure_days_cell is the exposure rounded up to whole days (at least 1). A ratio metric's users with no denominator
    events are left out: a rate per denominator event says nothing about them. -#}
with

user_counts as (

    select * from {{ ref('fct_user_cv_counts') }}

),

metrics as (

    select * from {{ ref('stg_metrics') }}

),

cells as (

    select
        user_counts.experiment_id,
        user_counts.metric_id,
        user_counts.variant,
        user_counts.cv_count,
        {{ exposure_days_cell('user_counts.exposure_days') }} as exposure_days_cell,
        user_counts.denominator_count,
        case when metrics.metric_type = 'count' then user_counts.pre_cv_count end as pre_cv_count
    from user_counts
    inner join metrics
        on metrics.metric_id = user_counts.metric_id
    where user_counts.denominator_count is null or user_counts.denominator_count > 0

),

final as (

    select
        experiment_id,
        metric_id,
        variant,
        cv_count,
        exposure_days_cell,
        denominator_count,
        pre_cv_count,
        count(*) as n_users
    from cells
    group by experiment_id, metric_id, variant, cv_count, exposure_days_cell, denominator_count, pre_cv_count

)

select * from final
