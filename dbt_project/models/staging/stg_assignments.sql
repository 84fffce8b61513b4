with

source as (

    select * from {{ source('raw', 'assignments') }}

),

renamed as (

    select
        cast(experiment_id as {{ dbt.type_string() }}) as experiment_id,
        cast(user_id as {{ dbt.type_string() }}) as user_id,
        cast(variant as {{ dbt.type_string() }}) as variant,
        cast(assigned_at as {{ dbt.type_timestamp() }}) as assigned_at
    from source

)

select * from renamed
