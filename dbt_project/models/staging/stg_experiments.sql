with

source as (

    select * from {{ source('raw', 'experiments') }}

),

renamed as (

    select
        cast(experiment_id as {{ dbt.type_string() }}) as experiment_id,
        cast(control_variant as {{ dbt.type_string() }}) as control_variant,
        cast(start_at as {{ dbt.type_timestamp() }}) as start_at,
        cast(end_at as {{ dbt.type_timestamp() }}) as end_at
    from source

)

select * from renamed
