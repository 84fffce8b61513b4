{#- One row per successful run x experiment x metric x variant: every lift column
    over nightly runs ("chance to win over time"). rpt_experiment_results_latest is
    its newest row per experiment x metric x variant. -#}
with

runs as (

    select * from {{ source('glmm', 'runs') }}
    where status = 'succeeded'

),

lift as (

    select * from {{ source('glmm', 'lift') }}

),

final as (

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
        lift.decision,
        lift.decision_reason
    from lift
    inner join runs on runs.run_id = lift.run_id

)

select * from final
