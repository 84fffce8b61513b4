{#- Each experiment's counting window: [start_at, window_end), where window_end is
    the experiment's end or the run's as-of time, whichever is first. -#}
with

experiments as (

    select * from {{ ref('stg_experiments') }}

),

windows as (

    select
        experiment_id,
        control_variant,
        start_at,
        end_at,
        {{ as_of() }} as as_of,
        case
            when end_at is not null and end_at < {{ as_of() }} then end_at
            else {{ as_of() }}
        end as window_end
    from experiments

)

select * from windows
