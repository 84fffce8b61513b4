with

source as (

    select * from {{ source('raw', 'metrics') }}

),

renamed as (

    select
        cast(metric_id as {{ dbt.type_string() }}) as metric_id,
        cast(event_name as {{ dbt.type_string() }}) as event_name
    from source

)

select * from renamed
