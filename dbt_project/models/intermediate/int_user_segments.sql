{#- Each experiment's users' segment per dimension. An experiment's own row wins over the row for
    every experiment (experiment_id NULL); a user with two segments in one dimension there is in
    '(multiple)', so every user is counted once. Users without a row are placed in '(none)' by
    fct_segment_histogram. -#}
with

segments as (

    select * from {{ ref('stg_user_segments') }}

),

experiments as (

    select * from {{ ref('stg_experiments') }}

),

candidates as (

    select
        experiments.experiment_id,
        segments.user_id,
        segments.dimension,
        segments.segment,
        case when segments.experiment_id is null then 1 else 0 end as is_default
    from segments
    inner join experiments
        on segments.experiment_id = experiments.experiment_id
        or segments.experiment_id is null

),

ranked as (

    select
        *,
        min(is_default) over (partition by experiment_id, user_id, dimension) as best
    from candidates

),

final as (

    select
        experiment_id,
        user_id,
        dimension,
        case when count(distinct segment) > 1 then '(multiple)' else min(segment) end as segment
    from ranked
    where is_default = best
    group by experiment_id, user_id, dimension

)

select * from final
