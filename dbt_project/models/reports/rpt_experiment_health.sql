{#- One row per experiment x metric of its latest successful run: is the answer
    trustworthy and current? Sample ratio, assignment conflicts, sampler
    diagnostics, data freshness, the data issues of dq_data_issues, and a fit
    that failed. health_status: 'failed' (the decision
    cannot be trusted), 'warning' (look before you act) or 'ok'. -#}
with

runs as (

    select * from {{ source('glmm', 'runs') }}

),

diagnostics as (

    select * from {{ source('glmm', 'diagnostics') }}

),

fit_failures as (

    select * from {{ source('glmm', 'fit_failures') }}

),

experiments as (

    select * from {{ ref('stg_experiments') }}

),

metrics as (

    select * from {{ ref('stg_metrics') }}

),

conflicts as (

    select * from {{ ref('dq_assignment_conflicts') }}

),

data_issues as (

    select * from {{ ref('dq_data_issues') }}

),

raw_events as (

    select {{ typed_raw_columns(source('raw', 'events'), 'events') }}
    from {{ source('raw', 'events') }}

),

raw_assignments as (

    select {{ typed_raw_columns(source('raw', 'assignments'), 'assignments') }}
    from {{ source('raw', 'assignments') }}

),

pair_outcomes as (

    select run_id, experiment_id, metric_id, cast(null as {{ dbt.type_string() }}) as fit_error
    from diagnostics
    union all
    select run_id, experiment_id, metric_id, error as fit_error
    from fit_failures

),

latest_pairs as (

    select
        pair_outcomes.*,
        runs.as_of,
        runs.finished_at,
        row_number() over (
            partition by pair_outcomes.experiment_id, pair_outcomes.metric_id
            order by runs.as_of desc, runs.finished_at desc, runs.run_id desc
        ) as recency
    from pair_outcomes
    inner join runs on runs.run_id = pair_outcomes.run_id and runs.status = 'succeeded'

),

conflicts_per_experiment as (

    select experiment_id, count(*) as n_assignment_conflicts
    from conflicts
    group by experiment_id

),

{#- Conflicts are counted above; the experiment's other data issues, listed. -#}
issues_per_experiment as (

    select
        experiment_id,
        count(*) as n_data_issues,
        {{ ordered_listagg("issue || ' (' || cast(n_rows as " ~ dbt.type_string() ~ ") || ')'", "', '", "issue") }}
            as data_issues
    from data_issues
    where experiment_id is not null and issue <> 'user_in_several_variants'
    group by experiment_id

),

{#- Freshness straight from the raw tables: a plain aggregate, no dedup scan. -#}
events_per_name as (

    select event_name, count(*) as n_events, max(event_at) as last_event_at
    from raw_events
    group by event_name

),

{#- Drift: events whose name equals the metric's event name but for case or
    surrounding spaces. They are not counted (dq_data_issues: event_name_near_miss). -#}
near_misses_per_metric as (

    select metrics.metric_id, sum(events_per_name.n_events) as n_near_miss_events
    from metrics
    inner join events_per_name
        on lower(trim(events_per_name.event_name)) = lower(trim(metrics.event_name))
       and events_per_name.event_name <> metrics.event_name
    group by metrics.metric_id

),

last_assignment_per_experiment as (

    select experiment_id, max(assigned_at) as last_assigned_at
    from raw_assignments
    group by experiment_id

),

joined as (

    select
        latest.experiment_id,
        latest.metric_id,
        latest.run_id,
        latest.as_of,
        latest.finished_at,
        experiments.control_variant,
        latest.fit_error,
        diagnostics.n_users,
        diagnostics.converged,
        diagnostics.failure_reasons,
        diagnostics.divergences,
        diagnostics.max_r_hat,
        diagnostics.min_ess_bulk,
        diagnostics.min_bfmi,
        diagnostics.srm_p_value,
        diagnostics.ppc_p_value,
        -- runs from before the adjusted value was recorded: the raw one
        coalesce(diagnostics.ppc_p_value_adjusted, diagnostics.ppc_p_value) as ppc_p_value_adjusted,
        coalesce(conflicts_per_experiment.n_assignment_conflicts, 0) as n_assignment_conflicts,
        coalesce(issues_per_experiment.n_data_issues, 0) as n_data_issues,
        issues_per_experiment.data_issues,
        coalesce(near_misses_per_metric.n_near_miss_events, 0) as n_near_miss_events,
        events_per_name.last_event_at,
        last_assignment_per_experiment.last_assigned_at,
        {{ dbt.datediff("events_per_name.last_event_at", "latest.as_of", "second") }} / 3600.0
            as hours_since_last_event
    from latest_pairs as latest
    left join experiments on experiments.experiment_id = latest.experiment_id
    left join metrics on metrics.metric_id = latest.metric_id
    left join diagnostics
        on diagnostics.run_id = latest.run_id
       and diagnostics.experiment_id = latest.experiment_id
       and diagnostics.metric_id = latest.metric_id
    left join conflicts_per_experiment on conflicts_per_experiment.experiment_id = latest.experiment_id
    left join issues_per_experiment on issues_per_experiment.experiment_id = latest.experiment_id
    left join events_per_name on events_per_name.event_name = metrics.event_name
    left join near_misses_per_metric on near_misses_per_metric.metric_id = latest.metric_id
    left join last_assignment_per_experiment on last_assignment_per_experiment.experiment_id = latest.experiment_id
    where latest.recency = 1

),

final as (

    select
        *,
        case
            when fit_error is not null or not converged then 'failed'
            when n_assignment_conflicts > 0
              or n_data_issues > 0
              or n_near_miss_events > 0
              or last_event_at is null
              or hours_since_last_event > {{ var('freshness_warn_hours') }}
              or ppc_p_value_adjusted < {{ var('ppc_warn_p_value') }} then 'warning'
            else 'ok'
        end as health_status,
        nullif(concat_ws('; ',
            case when fit_error is not null then 'fit failed: ' || fit_error end,
            case when not converged then 'checks failed: ' || failure_reasons end,
            case when n_assignment_conflicts > 0
                 then cast(n_assignment_conflicts as {{ dbt.type_string() }}) || ' user(s) in more than one variant (excluded)' end,
            case when n_data_issues > 0 then 'data issues (dq_data_issues): ' || data_issues end,
            case when n_near_miss_events > 0
                 then cast(n_near_miss_events as {{ dbt.type_string() }})
                      || ' event(s) named like this metric but for case or spaces were not counted (event_name_near_miss)' end,
            case when last_event_at is null then 'no events of this metric at all' end,
            case when hours_since_last_event > {{ var('freshness_warn_hours') }}
                 then 'no new events for ' || cast(round(hours_since_last_event) as {{ dbt.type_string() }}) || ' h before the run' end,
            case when ppc_p_value_adjusted < {{ var('ppc_warn_p_value') }}
                 then 'the model misfits the count histogram (predictive check, adjusted for the number of arms)' end
        ), '') as health_reasons
    from joined

)

select * from final
