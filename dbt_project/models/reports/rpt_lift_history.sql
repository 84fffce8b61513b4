{#- One row per as-of time x experiment x metric x variant: every lift column over
    nightly runs ("chance to win over time"). A rerun for the same as-of (a retry,
    a backfill) replaces the earlier answer: the newest successful run per as-of
    wins, so the history shows one answer per night. rpt_experiment_results_latest
    is its newest row per experiment x metric x variant. -#}
with

runs as (

    select * from {{ source('glmm', 'runs') }}
    where status = 'succeeded'

),

lift as (

    select * from {{ source('glmm', 'lift') }}

),

joined as (

    select
        lift.run_id,
        runs.as_of,
        runs.finished_at,
        lift.experiment_id,
        lift.metric_id,
        lift.variant,
        lift.control_variant,
        lift.n_users,
        lift.n_users_control,
        lift.observed_mean,
        lift.observed_mean_control,
        lift.observed_rate,
        lift.observed_rate_control,
        lift.expected_count_mean,
        lift.expected_count_low,
        lift.expected_count_high,
        lift.expected_count_control_mean,
        lift.expected_count_control_low,
        lift.expected_count_control_high,
        lift.relative_lift_mean,
        lift.relative_lift_median,
        lift.relative_lift_low,
        lift.relative_lift_high,
        lift.absolute_lift_mean,
        lift.absolute_lift_low,
        lift.absolute_lift_high,
        lift.prob_beat_control,
        lift.expected_loss_ship,
        lift.expected_loss_keep,
        lift.prob_in_rope,
        lift.prob_best,
        lift.expected_loss_vs_best,
        lift.prob_best_control,
        lift.expected_loss_vs_best_control,
        lift.decision,
        lift.decision_reason,
        lift.tolerated_drop,
        lift.prob_drop_beyond_tolerance
    from lift
    inner join runs on runs.run_id = lift.run_id

),

ranked as (

    select
        run_id,
        experiment_id,
        metric_id,
        variant,
        row_number() over (
            partition by as_of, experiment_id, metric_id, variant
            order by finished_at desc, run_id desc
        ) as rerun
    from joined

),

final as (

    select joined.*
    from joined
    inner join ranked
        on ranked.run_id = joined.run_id
       and ranked.experiment_id = joined.experiment_id
       and ranked.metric_id = joined.metric_id
       and ranked.variant = joined.variant
    where ranked.rerun = 1

)

select * from final
