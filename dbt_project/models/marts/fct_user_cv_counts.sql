{#- One row per experiment x metric x user: the analysis population.
    Every metric is analysed for every experiment; users with no events count 0;
    users seen in more than one variant are excluded (see dq_assignment_conflicts).
    A conversion metric's count is 1 when the user had at least one event; a ratio
    metric also carries the user's denominator events. pre_cv_count: the metric's
    events in the pre-period before first exposure, NULL for a user with no history
    (no event of any name there). The counts are int_user_metric_counts' (incremental);
    the exposure runs to this run's window end. A view: it reads that table once per use (the two
    histograms and dq_data_issues), cheaper than writing its 20M rows on a 10 x 2 x 1M night. -#}
{{ config(materialized='view') }}
with

user_counts as (

    select * from {{ ref('int_user_metric_counts') }}

),

windows as (

    select * from {{ ref('int_experiment_windows') }}

),

{#- the data-quality mart's table, not the view it copies: the conflict rule runs once per build -#}
conflicts as (

    select * from {{ ref('dq_assignment_conflicts') }}

),

final as (

    select
        user_counts.experiment_id,
        user_counts.metric_id,
        user_counts.user_id,
        user_counts.variant,
        user_counts.cv_count,
        cast(
            {{ dbt.datediff('user_counts.first_exposed_at', 'windows.window_end', 'second') }} / 86400.0
            as {{ type_double() }}
        ) as exposure_days,
        user_counts.first_exposed_at,
        user_counts.denominator_count,
        user_counts.pre_cv_count
    from user_counts
    inner join windows
        on windows.experiment_id = user_counts.experiment_id
    left join conflicts
        on conflicts.experiment_id = user_counts.experiment_id
       and conflicts.user_id = user_counts.user_id
    where conflicts.user_id is null

)

select * from final
