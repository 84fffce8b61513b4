{#- Exposure log, typed; rows with a NULL key are dropped (dq_data_issues counts them). -#}
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

),

{#- A row missing any key cannot be attributed: dropped here, counted in dq_data_issues. -#}
complete as (

    select * from renamed
    where experiment_id is not null
      and user_id is not null
      and variant is not null
      and assigned_at is not null

)

select * from complete
