{#- Data quality: one row per experiment (NULL where no experiment can be named) x
    issue found in the raw logs this run, with how many rows it touches and what the
    pipeline did about it. Nothing here is silently dropped: every row the models
    exclude or cannot use is counted. severity 'error': the experiment cannot be
    analysed as it stands (no fit, or no users); 'warning': rows were excluded or
    look suspicious, the analysis went on without them. -#}
with

raw_assignments as (

    select {{ typed_raw_columns(source('raw', 'assignments'), 'assignments') }}
    from {{ source('raw', 'assignments') }}

),

raw_events as (

    select {{ typed_raw_columns(source('raw', 'events'), 'events') }}
    from {{ source('raw', 'events') }}

),

experiments as (

    select * from {{ ref('int_experiment_windows') }}

),

metrics as (

    select * from {{ ref('stg_metrics') }}

),

{#- Tables, not the intermediate views: at 20M events each view would be recomputed. -#}
user_counts as (

    select * from {{ ref('fct_user_cv_counts') }}

),

first_exposures as (

    {#- every exposed, conflict-free user has a row for every metric: one metric gives one row per user -#}
    select experiment_id, user_id, first_exposed_at
    from user_counts
    where metric_id = (select min(metric_id) from user_counts)

),

exposures as (

    select * from {{ ref('int_exposures_in_window') }}

),

conflicts as (

    select * from {{ ref('dq_assignment_conflicts') }}

),

null_assignment_keys as (

    select
        experiment_id,
        'null_key_in_assignments' as issue,
        'warning' as severity,
        count(*) as n_rows,
        'exposures with a NULL experiment_id, user_id, variant or assigned_at were ignored' as detail
    from raw_assignments
    where experiment_id is null or user_id is null or variant is null or assigned_at is null
    group by experiment_id

),

null_event_keys as (

    select
        cast(null as {{ dbt.type_string() }}) as experiment_id,
        'null_key_in_events' as issue,
        'warning' as severity,
        count(*) as n_rows,
        'events with a NULL event_id, user_id, event_name or event_at were ignored' as detail
    from raw_events
    where event_id is null or user_id is null or event_name is null or event_at is null
    having count(*) > 0

),

duplicate_events as (

    select
        cast(null as {{ dbt.type_string() }}) as experiment_id,
        'duplicate_event_id' as issue,
        'warning' as severity,
        count(*) - count(distinct event_id) as n_rows,
        'repeated deliveries of an event_id were counted once' as detail
    from raw_events
    where event_id is not null
    having count(*) > count(distinct event_id)

),

future_events as (

    select
        cast(null as {{ dbt.type_string() }}) as experiment_id,
        'events_in_the_future' as issue,
        'warning' as severity,
        count(*) as n_rows,
        'events stamped after the time of the run (clock skew?) are never counted' as detail
    from raw_events
    where event_at > {{ utc_now() }}
    having count(*) > 0

),

unknown_experiments as (

    select
        raw_assignments.experiment_id,
        'unknown_experiment' as issue,
        'warning' as severity,
        count(*) as n_rows,
        'exposures of an experiment missing from raw.experiments were ignored' as detail
    from raw_assignments
    left join experiments on experiments.experiment_id = raw_assignments.experiment_id
    where raw_assignments.experiment_id is not null and experiments.experiment_id is null
    group by raw_assignments.experiment_id

),

conflicting_users as (

    select
        experiment_id,
        'user_in_several_variants' as issue,
        'warning' as severity,
        count(*) as n_rows,
        'users exposed to more than one variant were excluded (dq_assignment_conflicts lists them)' as detail
    from conflicts
    group by experiment_id

),

events_before_exposure as (

    select
        first_exposures.experiment_id,
        'events_before_exposure' as issue,
        'warning' as severity,
        count(*) as n_rows,
        'events of exposed users from before their first exposure were not counted' as detail
    from first_exposures
    inner join raw_events
        on raw_events.user_id = first_exposures.user_id
       and raw_events.event_at < first_exposures.first_exposed_at
    group by first_exposures.experiment_id

),

{#- The variants each experiment exposed (a handful of groups), then distinct users only for the
    experiments with an issue: counting every experiment's distinct users scanned the 10M exposures'
    user ids for nothing (2.3 s of this model at a million users per experiment). Exposures have no
    NULL key (stg_assignments), so no exposed variant means no user. -#}
variants_exposed as (

    select experiment_id, variant
    from exposures
    group by experiment_id, variant

),

arms as (

    select
        experiments.experiment_id,
        experiments.control_variant,
        count(variants_exposed.variant) as n_variants,
        max(case when variants_exposed.variant = experiments.control_variant then 1 else 0 end) as has_control
    from experiments
    left join variants_exposed on variants_exposed.experiment_id = experiments.experiment_id
    group by experiments.experiment_id, experiments.control_variant

),

flagged_arms as (

    select * from arms
    where n_variants < 2 or has_control = 0

),

flagged_users as (

    select exposures.experiment_id, count(distinct exposures.user_id) as n_users
    from exposures
    inner join flagged_arms on flagged_arms.experiment_id = exposures.experiment_id
    group by exposures.experiment_id

),

arm_issues as (

    select
        flagged_arms.experiment_id,
        case
            when flagged_arms.n_variants = 0 then 'no_users'
            when flagged_arms.has_control = 0 then 'control_variant_missing'
            else 'single_arm'
        end as issue,
        'error' as severity,
        coalesce(flagged_users.n_users, 0) as n_rows,
        case
            when flagged_arms.n_variants = 0 then 'no exposures inside the window of the experiment: nothing to analyse'
            when flagged_arms.has_control = 0
                then 'no user saw the control variant ' || chr(39) || flagged_arms.control_variant || chr(39) || ': no fit'
            else 'only one variant was exposed: no fit'
        end as detail
    from flagged_arms
    left join flagged_users on flagged_users.experiment_id = flagged_arms.experiment_id

),

inverted_windows as (

    select
        experiment_id,
        'inverted_window' as issue,
        'error' as severity,
        cast(1 as {{ dbt.type_bigint() }}) as n_rows,
        'end_at ' || cast(end_at as {{ dbt.type_string() }}) || ' is before start_at '
            || cast(start_at as {{ dbt.type_string() }}) || ': the window is empty, nothing is analysed' as detail
    from experiments
    where end_at < start_at

),

{#- Drift: a new SDK sends 'Purchase ' for 'purchase'. Exact names only are counted
    (a near miss may be another event); every near miss is named here and in
    rpt_experiment_health, so the lift it would change is flagged, not trusted. -#}
events_per_name as (

    select event_name, count(*) as n_events
    from raw_events
    where event_name is not null
    group by event_name

),

near_miss_names as (

    select
        cast(null as {{ dbt.type_string() }}) as experiment_id,
        'event_name_near_miss' as issue,
        'warning' as severity,
        sum(events_per_name.n_events) as n_rows,
        'events named like a metric but for case or surrounding spaces were not counted: '
            || {{ ordered_listagg("'[' || events_per_name.event_name || '] for metric ' || metrics.metric_id", "'; '", "events_per_name.event_name") }}
            as detail
    from events_per_name
    inner join metrics
        on lower(trim(events_per_name.event_name)) = lower(trim(metrics.event_name))
       and events_per_name.event_name <> metrics.event_name
    having count(*) > 0

),

metric_totals as (

    select experiment_id, metric_id, sum(cv_count) as n_events
    from user_counts
    group by experiment_id, metric_id

),

no_events as (

    select
        experiment_id,
        'no_events' as issue,
        'error' as severity,
        count(*) as n_rows,
        'no event of metric(s) ' || {{ ordered_listagg("metric_id", "', '", "metric_id") }}
            || ' from any exposed user inside the window: those metrics are not fitted' as detail
    from metric_totals
    where n_events = 0
    group by experiment_id

),

medians as (

    select
        experiment_id,
        metric_id,
        percentile_cont(0.5) within group (order by cv_count) as median_count
    from user_counts
    where cv_count > 0
    group by experiment_id, metric_id

),

extreme_users as (

    select
        user_counts.experiment_id,
        'extreme_user' as issue,
        'warning' as severity,
        count(*) as n_rows,
        'users with more than 1000 times the median count of the converting users of the experiment (bots?); kept in the fit, where the random intercept absorbs them' as detail
    from user_counts
    inner join medians
        on medians.experiment_id = user_counts.experiment_id
       and medians.metric_id = user_counts.metric_id
    where user_counts.cv_count > 1000 * medians.median_count
    group by user_counts.experiment_id

),

final as (

    select * from null_assignment_keys
    union all select * from null_event_keys
    union all select * from duplicate_events
    union all select * from future_events
    union all select * from unknown_experiments
    union all select * from conflicting_users
    union all select * from events_before_exposure
    union all select * from arm_issues
    union all select * from extreme_users
    union all select * from inverted_windows
    union all select * from near_miss_names
    union all select * from no_events

)

select * from final
