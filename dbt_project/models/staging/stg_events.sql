{#- Delivery retries repeat an event_id: keep its earliest occurrence once. A row missing any key
    cannot be counted: dropped, and counted in dq_data_issues. -#}
with

source as (

    select * from {{ source('raw', 'events') }}

),

complete as (

    {{ complete_events('source') }}

),

deduplicated as (

    {{ deduplicated_events('complete') }}

)

select * from deduplicated
