{#- The segment breakdowns behind the latest answer per experiment x metric x variant: the
    glmm.segment_lift rows of the run that rpt_experiment_results_latest shows, beside the
    overall lift they are pooled toward. -#}
with

segment_lift as (

    select * from {{ source('glmm', 'segment_lift') }}

),

latest as (

    select * from {{ ref('rpt_experiment_results_latest') }}

),

final as (

    select
        segment_lift.experiment_id,
        segment_lift.metric_id,
        segment_lift.dimension,
        segment_lift.segment,
        segment_lift.variant,
        segment_lift.control_variant,
        latest.run_id,
        latest.as_of,
        segment_lift.n_users,
        segment_lift.n_users_control,
        segment_lift.relative_lift_mean,
        segment_lift.relative_lift_low,
        segment_lift.relative_lift_high,
        segment_lift.prob_beat_control,
        segment_lift.srm_p_value,
        segment_lift.srm_p_value < 0.001 as srm_mismatch,
        latest.relative_lift_mean as overall_relative_lift_mean,
        segment_lift.n_segments,
        segment_lift.effect_spread_median,
        segment_lift.effect_spread_low,
        segment_lift.effect_spread_high,
        segment_lift.max_r_hat,
        segment_lift.divergences,
        segment_lift.valid
    from segment_lift
    inner join latest
        on latest.run_id = segment_lift.run_id
       and latest.experiment_id = segment_lift.experiment_id
       and latest.metric_id = segment_lift.metric_id
       and latest.variant = segment_lift.variant

)

select * from final
