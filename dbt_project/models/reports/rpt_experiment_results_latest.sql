{#- The latest answer per experiment x metric x variant: the row of
    rpt_lift_history with the newest as-of (ties: the run that finished last),
    with the experiment's metadata and the fit's diagnostics: what a dashboard
    shows. Newest as-of, not newest run: rerunning or backfilling an old night
    must not turn the dashboard back to that night. -#}
with

history as (

    select * from {{ ref('rpt_lift_history') }}

),

diagnostics as (

    select * from {{ source('glmm', 'diagnostics') }}

),

experiments as (

    select * from {{ ref('stg_experiments') }}

),

ranked as (

    select
        *,
        row_number() over (
            partition by experiment_id, metric_id, variant
            order by as_of desc, finished_at desc, run_id desc
        ) as recency
    from history

),

final as (

    select
        latest.experiment_id,
        latest.metric_id,
        latest.variant,
        latest.control_variant,
        experiments.start_at as experiment_start_at,
        experiments.end_at as experiment_end_at,
        latest.run_id,
        latest.as_of,
        latest.finished_at,
        latest.n_users,
        latest.n_users_control,
        latest.observed_mean,
        latest.observed_mean_control,
        latest.observed_rate,
        latest.observed_rate_control,
        latest.expected_count_mean,
        latest.expected_count_low,
        latest.expected_count_high,
        latest.expected_count_control_mean,
        latest.expected_count_control_low,
        latest.expected_count_control_high,
        latest.relative_lift_mean,
        latest.relative_lift_median,
        latest.relative_lift_low,
        latest.relative_lift_high,
        latest.absolute_lift_mean,
        latest.absolute_lift_low,
        latest.absolute_lift_high,
        latest.prob_beat_control,
        latest.expected_loss_ship,
        latest.expected_loss_keep,
        latest.prob_in_rope,
        latest.prob_best,
        latest.expected_loss_vs_best,
        latest.prob_best_control,
        latest.expected_loss_vs_best_control,
        latest.decision,
        latest.decision_reason,
        latest.tolerated_drop,
        latest.prob_drop_beyond_tolerance,
        diagnostics.metric_type,
        diagnostics.converged,
        diagnostics.divergences,
        diagnostics.max_r_hat,
        diagnostics.min_ess_bulk,
        diagnostics.srm_p_value,
        diagnostics.ppc_p_value,
        -- runs from before the adjusted value was recorded: the raw one
        coalesce(diagnostics.ppc_p_value_adjusted, diagnostics.ppc_p_value) as ppc_p_value_adjusted,
        diagnostics.planned_split,
        diagnostics.covariate,
        diagnostics.covariate_sd_ratio
    from ranked as latest
    left join experiments on experiments.experiment_id = latest.experiment_id
    left join diagnostics
        on diagnostics.run_id = latest.run_id
       and diagnostics.experiment_id = latest.experiment_id
       and diagnostics.metric_id = latest.metric_id
    where latest.recency = 1

)

select * from final
