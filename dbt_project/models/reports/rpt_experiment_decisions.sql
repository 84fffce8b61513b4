{#- One row per experiment x treatment variant: the experiment-level decision, from the latest
    result of each of its metrics (rpt_experiment_results_latest) and each metric's role.

    ship                  every primary metric says ship and no guardrail may drop beyond its
                          tolerance: P(lift < -tolerated_drop) < var guardrail_max_breach_probability
    blocked_by_guardrail  every primary metric says ship, but a guardrail may drop beyond its
                          tolerance, or has no valid result to tell
    keep_control          a primary metric says keep_control
    inconclusive          otherwise
    invalid               a primary metric has no valid result (its fit failed or its diagnostics did)
    no_primary_metric     raw.metrics names no primary metric -#}
{%- set max_breach = var('guardrail_max_breach_probability') -%}
with

latest as (

    select * from {{ ref('rpt_experiment_results_latest') }}

),

metrics as (

    select * from {{ ref('stg_metrics') }}

),

experiments as (

    select * from {{ ref('stg_experiments') }}

),

arms as (

    select distinct experiment_id, variant, control_variant
    from latest

),

{#- every arm x decisive metric, with the metric's latest result for the arm if there is one -#}
judged as (

    select
        arms.experiment_id,
        arms.variant,
        arms.control_variant,
        metrics.metric_id,
        metrics.role,
        latest.run_id,
        latest.as_of,
        latest.decision,
        latest.relative_lift_mean,
        latest.relative_lift_low,
        latest.relative_lift_high,
        latest.prob_beat_control,
        latest.prob_drop_beyond_tolerance,
        case when latest.decision is null or latest.decision = 'invalid' then 1 else 0 end as no_valid_result,
        case
            when metrics.role <> 'guardrail' then null
            when latest.decision is null or latest.decision = 'invalid'
                 or latest.prob_drop_beyond_tolerance is null then 'unchecked'
            when latest.prob_drop_beyond_tolerance >= {{ max_breach }} then 'breached'
            else 'ok'
        end as guardrail_status,
        row_number() over (
            partition by arms.experiment_id, arms.variant, metrics.role
            order by metrics.metric_id
        ) as rank_in_role
    from arms
    cross join metrics
    left join latest
        on latest.experiment_id = arms.experiment_id
       and latest.metric_id = metrics.metric_id
       and latest.variant = arms.variant
    where metrics.role in ('primary', 'guardrail')

),

per_arm as (

    select
        experiment_id,
        variant,
        control_variant,
        max(as_of) as as_of,
        sum(case when role = 'primary' then 1 else 0 end) as primary_metrics,
        sum(case when role = 'primary' then no_valid_result else 0 end) as primary_without_result,
        sum(case when role = 'primary' and decision = 'ship' then 1 else 0 end) as primary_ship,
        sum(case when role = 'primary' and decision = 'keep_control' then 1 else 0 end) as primary_keep_control,
        sum(case when role = 'guardrail' then 1 else 0 end) as guardrail_metrics,
        sum(case when guardrail_status = 'breached' then 1 else 0 end) as guardrails_breached,
        sum(case when guardrail_status = 'unchecked' then 1 else 0 end) as guardrails_unchecked,
        nullif({{ ordered_listagg("case when role = 'primary' and no_valid_result = 1 then metric_id end", "', '", "metric_id") }}, '')
            as primary_without_result_list,
        nullif({{ ordered_listagg("case when role = 'primary' and decision = 'keep_control' then metric_id end", "', '", "metric_id") }}, '')
            as primary_keep_control_list,
        nullif({{ ordered_listagg("case when guardrail_status in ('breached', 'unchecked') then metric_id end", "', '", "metric_id") }}, '')
            as guardrails_failing_list
    from judged
    group by experiment_id, variant, control_variant

),

first_primary as (

    select *
    from judged
    where role = 'primary' and rank_in_role = 1

),

decided as (

    select
        *,
        case
            when primary_metrics = 0 then 'no_primary_metric'
            when primary_without_result > 0 then 'invalid'
            when primary_ship = primary_metrics and guardrails_breached + guardrails_unchecked > 0
                then 'blocked_by_guardrail'
            when primary_ship = primary_metrics then 'ship'
            when primary_keep_control > 0 then 'keep_control'
            else 'inconclusive'
        end as decision
    from per_arm

),

final as (

    select
        per_arm.experiment_id,
        per_arm.variant,
        per_arm.control_variant,
        per_arm.decision,
        case per_arm.decision
            when 'no_primary_metric' then 'no metric has the role primary in raw.metrics'
            when 'invalid' then
                {{ dbt.concat(["'no valid result for primary metric(s) '", "per_arm.primary_without_result_list"]) }}
            when 'blocked_by_guardrail' then
                {{ dbt.concat(["'every primary metric says ship, but guardrail(s) '", "per_arm.guardrails_failing_list",
                               "' may drop beyond their tolerance (P >= " ~ max_breach ~ ") or have no valid result'"]) }}
            when 'ship' then
                'every primary metric says ship; no guardrail drops beyond its tolerance (P < {{ max_breach }})'
            when 'keep_control' then
                {{ dbt.concat(["'primary metric(s) '", "per_arm.primary_keep_control_list", "' say keep_control'"]) }}
            else 'not every primary metric says ship yet'
        end as decision_reason,
        per_arm.primary_metrics,
        first_primary.metric_id as primary_metric_id,
        first_primary.relative_lift_mean as primary_relative_lift_mean,
        first_primary.relative_lift_low as primary_relative_lift_low,
        first_primary.relative_lift_high as primary_relative_lift_high,
        first_primary.prob_beat_control as primary_prob_beat_control,
        first_primary.decision as primary_decision,
        per_arm.guardrail_metrics,
        per_arm.guardrails_breached,
        per_arm.guardrails_unchecked,
        case
            when per_arm.guardrail_metrics = 0 then 'none'
            when per_arm.guardrails_breached > 0 then 'breached'
            when per_arm.guardrails_unchecked > 0 then 'unchecked'
            else 'ok'
        end as guardrail_status,
        per_arm.guardrails_failing_list as guardrails_failing,
        experiments.start_at as experiment_start_at,
        experiments.end_at as experiment_end_at,
        per_arm.as_of,
        cast(
            {{ dbt.datediff('experiments.start_at', 'least(coalesce(experiments.end_at, per_arm.as_of), per_arm.as_of)', 'second') }}
            / 86400.0
            as {{ type_double() }}
        ) as days_running
    from decided as per_arm
    left join first_primary
        on first_primary.experiment_id = per_arm.experiment_id
       and first_primary.variant = per_arm.variant
    left join experiments on experiments.experiment_id = per_arm.experiment_id

)

select * from final
