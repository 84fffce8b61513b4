{#- The segment breakdowns' sufficient statistics: users per experiment x primary metric x dimension x
    segment x variant x cv_count x exposure cell, for the metrics that decide (role 'primary'). Every user of the experiment is in each of its dimensions: one without a
    segment there is in '(none)'. A ratio metric's users with no denominator events are left out,
    as in fct_cv_count_histogram. -#}
with

user_counts as (

    select * from {{ ref('fct_user_cv_counts') }}

),

metrics as (

    select * from {{ ref('stg_metrics') }}

),

user_segments as (

    select * from {{ ref('int_user_segments') }}

),

{#- an experiment's dimensions: those with a segment for at least one of its analysed users -#}
dimensions as (

    select distinct user_segments.experiment_id, user_segments.dimension
    from user_segments
    inner join user_counts
        on user_counts.experiment_id = user_segments.experiment_id
       and user_counts.user_id = user_segments.user_id

),

cells as (

    select
        user_counts.experiment_id,
        user_counts.metric_id,
        dimensions.dimension,
        coalesce(user_segments.segment, '(none)') as segment,
        user_counts.variant,
        user_counts.cv_count,
        {{ exposure_days_cell('user_counts.exposure_days') }} as exposure_days_cell,
        user_counts.denominator_count
    from user_counts
    inner join metrics
        on metrics.metric_id = user_counts.metric_id
    inner join dimensions
        on dimensions.experiment_id = user_counts.experiment_id
    left join user_segments
        on user_segments.experiment_id = user_counts.experiment_id
       and user_segments.user_id = user_counts.user_id
       and user_segments.dimension = dimensions.dimension
    where metrics.role = 'primary'
      and (user_counts.denominator_count is null or user_counts.denominator_count > 0)

),

final as (

    select
        experiment_id,
        metric_id,
        dimension,
        segment,
        variant,
        cv_count,
        exposure_days_cell,
        denominator_count,
        count(*) as n_users
    from cells
    group by experiment_id, metric_id, dimension, segment, variant, cv_count, exposure_days_cell, denominator_count

)

select * from final
