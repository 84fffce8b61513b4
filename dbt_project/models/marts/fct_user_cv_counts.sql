{#- One row per experiment x metric x user: the analysis population.
    Every metric is analysed for every experiment; users with no events count 0;
    users seen in more than one variant are excluded (see dq_assignment_conflicts).
    A conversion metric's count is 1 when the user had at least one event; a ratio
    metric also carries the user's denominator events. pre_cv_count: the metric's
    events in the pre-period before first exposure, NULL for a user with no history. -#}
with

first_exposures as (

    select * from {{ ref('int_first_exposures') }}

),

{#- the data-quality mart's table, not the view it copies: the conflict rule runs once per build -#}
conflicts as (

    select * from {{ ref('dq_assignment_conflicts') }}

),

metrics as (

    select * from {{ ref('stg_metrics') }}

),

conversions as (

    select * from {{ ref('int_user_conversions') }}

),

pre_period as (

    select * from {{ ref('int_user_pre_period') }}

),

clean_exposures as (

    select first_exposures.*
    from first_exposures
    left join conflicts
        on conflicts.experiment_id = first_exposures.experiment_id
       and conflicts.user_id = first_exposures.user_id
    where conflicts.user_id is null

),

user_metrics as (

    select
        clean_exposures.experiment_id,
        metrics.metric_id,
        metrics.metric_type,
        clean_exposures.user_id,
        clean_exposures.variant,
        clean_exposures.first_exposed_at,
        clean_exposures.window_end
    from clean_exposures
    cross join metrics

),

final as (

    select
        user_metrics.experiment_id,
        user_metrics.metric_id,
        user_metrics.user_id,
        user_metrics.variant,
        cast(
            case
                when user_metrics.metric_type = 'conversion' and conversions.cv_count > 0 then 1
                else coalesce(conversions.cv_count, 0)
            end as {{ dbt.type_bigint() }}
        ) as cv_count,
        cast(
            {{ dbt.datediff('user_metrics.first_exposed_at', 'user_metrics.window_end', 'second') }} / 86400.0
            as {{ type_double() }}
        ) as exposure_days,
        user_metrics.first_exposed_at,
        cast(
            case when user_metrics.metric_type = 'ratio' then coalesce(conversions.denominator_count, 0) end
            as {{ dbt.type_bigint() }}
        ) as denominator_count,
        cast(pre_period.pre_cv_count as {{ dbt.type_bigint() }}) as pre_cv_count
    from user_metrics
    left join conversions
        on conversions.experiment_id = user_metrics.experiment_id
       and conversions.metric_id = user_metrics.metric_id
       and conversions.user_id = user_metrics.user_id
    left join pre_period
        on pre_period.experiment_id = user_metrics.experiment_id
       and pre_period.metric_id = user_metrics.metric_id
       and pre_period.user_id = user_metrics.user_id

)

select * from final
