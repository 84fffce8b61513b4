{#- Delivery retries repeat an event_id: keep its earliest occurrence once. -#}
with

source as (

    select * from {{ source('raw', 'events') }}

),

typed as (

    select {{ typed_raw_columns(source('raw', 'events'), 'events') }}
    from source
    -- a row missing any key cannot be counted: dropped, and counted in dq_data_issues
    where event_id is not null
      and user_id is not null
      and event_name is not null
      and event_at is not null

),

ranked as (

    select
        *,
        row_number() over (partition by event_id order by event_at, user_id, event_name) as occurrence
    from typed

),

deduplicated as (

    select event_id, user_id, event_name, event_at
    from ranked
    where occurrence = 1

)

select * from deduplicated
