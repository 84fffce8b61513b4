{#- Exposures that happened inside the experiment's window. -#}
with

assignments as (

    select * from {{ ref('stg_assignments') }}

),

windows as (

    select * from {{ ref('int_experiment_windows') }}

),

in_window as (

    select
        assignments.experiment_id,
        assignments.user_id,
        assignments.variant,
        assignments.assigned_at,
        windows.window_end
    from assignments
    inner join windows
        on assignments.experiment_id = windows.experiment_id
    where assignments.assigned_at >= windows.start_at
      and assignments.assigned_at < windows.window_end

)

select * from in_window
