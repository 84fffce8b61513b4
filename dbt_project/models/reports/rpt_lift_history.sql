{#- One row per successful run x experiment x metric x variant: how the lift and
    the chance to beat control moved over nightly runs. -#}
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
        lift.relative_lift_mean,
        lift.relative_lift_low,
        lift.relative_lift_high,
        lift.prob_beat_control,
        lift.expected_loss_ship,
        lift.expected_loss_keep,
        lift.decision
    from lift
    inner join runs on runs.run_id = lift.run_id

)

select * from final
